// report.html's unit explorer (report/explorer.py): reads the JSON of #fl-data and draws the layer buttons,
// the sortable table of units and, for a chosen unit, its two matrices and its clusters' thumbnails.
(function () {
  var D = JSON.parse(document.getElementById('fl-data').textContent);
  var cur = null, sortKey = 'noise', sortDir = -1;
  function el(tag, attrs, html) { var e = document.createElement(tag); for (var k in (attrs || {})) e.setAttribute(k, attrs[k]); if (html !== undefined) e.innerHTML = html; return e; }
  function esc(s) { return String(s).replace(/[&<>"]/g, function (c) { return {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'}[c]; }); }
  var bar = document.getElementById('fl-layers');
  var kinds = {}; D.layers.forEach(function (L) { kinds[L.kind] = 1; });
  var mixed = Object.keys(kinds).length > 1;  // a run with several unit kinds: each button says its kind
  D.layers.forEach(function (L, i) {
    var name = esc(L.name) + (mixed ? ' (' + esc(L.kind) + 's)' : '');
    var b = el('button', {'class': 'fl-layer', 'data-layer': String(i)}, name);
    b.onclick = function () { showLayer(i); }; bar.appendChild(b);
  });
  function showLayer(i) {
    cur = i;
    Array.prototype.forEach.call(bar.children, function (b) { b.className = 'fl-layer' + (b.getAttribute('data-layer') == i ? ' on' : ''); });
    renderTable(); document.getElementById('fl-detail').innerHTML = '';
  }
  var cols = [['u', '#'], ['clusters', 'clusters'], ['n', 'n'], ['size', 'size'], ['noise', 'noise'], ['vote', 'vote']];
  D.layers.forEach(function (L) { L.units = L.units.map(function (r) { var o = {}; D.columns.forEach(function (c, i) { o[c] = r[i]; }); return o; }); });
  function renderTable() {
    var L = D.layers[cur], units = L.units.slice();
    units.sort(function (a, b) { var x = a[sortKey], y = b[sortKey]; if (x === null) return 1; if (y === null) return -1; return (x < y ? -1 : x > y ? 1 : 0) * sortDir; });
    var t = el('table', {'id': 'fl-units'}), head = el('tr');
    cols.forEach(function (c) { var th = el('th', {'data-sort': c[0]}, c[1] + (sortKey === c[0] ? (sortDir > 0 ? ' &#9650;' : ' &#9660;') : ''));
      th.onclick = function () { if (sortKey === c[0]) sortDir = -sortDir; else { sortKey = c[0]; sortDir = c[0] === 'u' ? 1 : -1; } renderTable(); }; head.appendChild(th); });
    t.appendChild(head);
    units.forEach(function (u) {
      var tr = el('tr', {'data-unit': String(u.u), 'data-detail': L.detail[u.u] ? '1' : '0'});
      cols.forEach(function (c) { var v = u[c[0]]; tr.appendChild(el('td', c[0] === 'clusters' ? {'class': 'l'} : {}, v === null ? '' : esc(v))); });
      tr.onclick = function () { showUnit(u.u, tr); }; t.appendChild(tr);
    });
    var box = document.getElementById('fl-table'); box.innerHTML = ''; box.appendChild(t);
  }
  function color(v) { var a = Math.min(1, Math.abs(v)); var r = v > 0 ? 255 : Math.round(255 * (1 - a)), b = v < 0 ? 255 : Math.round(255 * (1 - a)), g = Math.round(255 * (1 - a)); return [r, g, b]; }
  function draw(det, binary) {
    var n = det.order.length, raw = atob(det.m), px = Math.max(2, Math.floor(300 / n)), c = el('canvas', {'class': 'fl-m ' + (binary ? 'fl-bin' : 'fl-raw'), 'width': n * px, 'height': n * px});
    var g = c.getContext('2d');
    for (var i = 0; i < n; i++) for (var j = 0; j < n; j++) {
      var q = raw.charCodeAt(i * n + j); if (q > 127) q -= 256; var v = q / 100;
      var rgb = binary ? (v > D.threshold ? [20, 20, 20] : [255, 255, 255]) : color(v);
      g.fillStyle = 'rgb(' + rgb.join(',') + ')'; g.fillRect(j * px, i * px, px, px);
    }
    var pos = 0; g.strokeStyle = '#f28e2b'; g.lineWidth = 2;
    det.clusters.forEach(function (cl) { g.strokeRect(pos * px, pos * px, cl.length * px, cl.length * px); pos += cl.length; });
    return c;
  }
  function showUnit(u, tr) {
    Array.prototype.forEach.call(document.querySelectorAll('#fl-units tr'), function (r) { r.className = ''; });
    tr.className = 'sel';
    var L = D.layers[cur], det = L.detail[u], box = document.getElementById('fl-detail');
    box.innerHTML = '<h3>' + esc(L.name) + ' ' + L.kind + ' ' + u + '</h3>';
    if (!det) { box.appendChild(el('p', {'class': 'muted fl-none'}, 'Numbers only: this unit\'s matrix and thumbnails are not embedded (raise --explorer-units).')); return; }
    var names = det.order.map(function (i) { return D.labels[i]; });
    box.appendChild(el('p', {'class': 'muted'}, 'rows: input label, columns: output unit, in this order: ' + esc(names.join(', ')) + (det.dead ? ' (largest element &le; 0: no clusters)' : '')));
    var row = el('div'); row.appendChild(draw(det, false)); row.appendChild(draw(det, true)); box.appendChild(row);
    det.clusters.forEach(function (cl, k) {
      var p = el('div', {'class': 'fl-cluster'}, '<b>cluster ' + (k + 1) + '</b>: ' + esc(cl.map(function (i) { return D.labels[i]; }).join(' + ')) + '<br>');
      (det.top[k] || []).forEach(function (i) { var src = D.images[String(i)]; if (src) p.appendChild(el('img', {'class': 'fl-thumb', 'src': src, 'alt': 'test image ' + i, 'title': 'test image ' + i})); });
      box.appendChild(p);
    });
    if (!det.clusters.length) box.appendChild(el('p', {'class': 'muted'}, 'no cluster at this threshold'));
  }
  if (D.layers.length) showLayer(0);
})();
