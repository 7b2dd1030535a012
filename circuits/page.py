"""A static page that renders a pruned attribution graph offline: one self-contained HTML file
(no network, no fetch) with the graph's Neuronpedia JSON inlined, drawn as SVG by a small
script. Columns are prompt positions, rows layers (embeddings at the bottom, logits on top);
edges are blue (positive) or red (negative), their width growing with |weight| (the
``MAX_DRAWN`` strongest are drawn; every edge is listed in the node panel). Clicking a node
(or ``index.html#node=ID``) shows its label, activation, influence, card link and its
strongest incoming and outgoing edges.
"""

from __future__ import annotations

import html
import json
from typing import Any

_STYLE = """
body{font:14px system-ui,sans-serif;margin:0;display:flex;height:100vh;color:#222}
#main{flex:1;overflow:auto;padding:8px} #side{width:340px;border-left:1px solid #ddd;padding:10px;overflow:auto}
h1{font-size:16px;margin:4px 0} .meta{color:#666;font-size:12px}
svg text{font-size:10px;fill:#444} .node{cursor:pointer;stroke:#333;stroke-width:.6}
.node.feature{fill:#f5c542} .node.error{fill:#bbb} .node.embedding{fill:#8fd19e} .node.logit{fill:#7fb3ff}
.node.sel{stroke:#000;stroke-width:2.5} .edge{fill:none} table{border-collapse:collapse;font-size:12px}
td{padding:2px 4px;border-bottom:1px solid #eee} #top li{cursor:pointer}
"""

_SCRIPT = r"""
const G = JSON.parse(document.getElementById('graph-data').textContent);
const M = G.metadata, byId = {};
G.nodes.forEach(n => byId[n.node_id] = n);
const label = n => n.clerp || (n.feature_type === 'cross layer transcoder' ? `L${n.layer} #${n.node_id.split('_')[1]}` : n.node_id);
const nPos = M.prompt_tokens.length;
// rows: embeddings 0, layer l at l + 1, logits (layer n_layers + 1) right above the last layer
const rowOf = n => n.layer === 'E' ? 0 : n.feature_type === 'logit' ? +n.layer : +n.layer + 1;
const maxRow = Math.max(...G.nodes.map(rowOf));
const X0 = 60, Y0 = 20, W = Math.max(40, Math.min(110, 1100 / nPos)), H = Math.max(12, Math.min(46, 700 / (maxRow + 1)));
const cells = {};
G.nodes.forEach(n => { const k = rowOf(n) + ':' + n.ctx_idx; (cells[k] = cells[k] || []).push(n); });
Object.values(cells).forEach(list => list.forEach((n, i) => {
  n.x = X0 + n.ctx_idx * W + (i - (list.length - 1) / 2) * Math.min(12, 70 / list.length);
  n.y = Y0 + (maxRow - rowOf(n)) * H;
}));
const svgNS = 'http://www.w3.org/2000/svg';
const svg = document.getElementById('graph');
svg.setAttribute('width', X0 + nPos * W + 20); svg.setAttribute('height', Y0 + (maxRow + 1) * H + 30);
// draw the strongest edges only (all of them stay in the node panel)
const drawn = G.links.slice().sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight)).slice(0, MAX_DRAWN);
const maxW = Math.max(1e-9, ...drawn.map(l => Math.abs(l.weight)));
const el = (tag, attrs, parent) => { const e = document.createElementNS(svgNS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]); parent.appendChild(e); return e; };
const edges = el('g', {id: 'edges'}, svg), nodesG = el('g', {id: 'nodes'}, svg);
drawn.forEach(l => { const s = byId[l.source], t = byId[l.target]; if (!s || !t) return;
  el('path', {class: 'edge', d: `M${s.x},${s.y} L${t.x},${t.y}`, stroke: l.weight > 0 ? '#2b6cb0' : '#c53030',
    'stroke-opacity': 0.15 + 0.6 * Math.abs(l.weight) / maxW, 'stroke-width': 0.3 + 3 * Math.abs(l.weight) / maxW,
    'data-source': l.source, 'data-target': l.target}, edges); });
const kind = n => n.feature_type === 'embedding' ? 'embedding' : n.feature_type === 'logit' ? 'logit'
  : n.feature_type.includes('error') ? 'error' : 'feature';
G.nodes.forEach(n => { const k = kind(n);
  const e = k === 'error' || k === 'logit'
    ? el('rect', {x: n.x - 5, y: n.y - 5, width: 10, height: 10}, nodesG)
    : el('circle', {cx: n.x, cy: n.y, r: 5}, nodesG);
  e.setAttribute('class', 'node ' + k); e.setAttribute('data-id', n.node_id);
  el('title', {}, e).textContent = label(n);
  e.addEventListener('click', () => { location.hash = 'node=' + encodeURIComponent(n.node_id); }); });
M.prompt_tokens.forEach((t, i) => { const tx = el('text', {x: X0 + i * W, y: Y0 + (maxRow + 1) * H, 'text-anchor': 'middle'}, svg);
  tx.textContent = JSON.stringify(t); });
for (let r = 0; r <= maxRow; r++) { const tx = el('text', {x: 4, y: Y0 + (maxRow - r) * H + 3}, svg);
  tx.textContent = r === 0 ? 'emb' : r === maxRow ? 'logit' : 'L' + (r - 1); }
const esc = s => String(s).replace(/[&<>"]/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'}[c]));
function edgeRows(list, key) {
  return list.sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight)).slice(0, 8).map(l =>
    `<tr><td>${esc(label(byId[l[key]] || {node_id: l[key]}))}</td><td>${l.weight.toFixed(3)}</td></tr>`).join('');
}
function show() {
  const m = /node=([^&]*)/.exec(location.hash); const id = m && decodeURIComponent(m[1]);
  document.querySelectorAll('.node.sel').forEach(e => e.classList.remove('sel'));
  const n = id && byId[id]; const d = document.getElementById('detail');
  if (!n) { d.innerHTML = '<p>Click a node.</p>'; return; }
  document.querySelector(`.node[data-id="${CSS.escape(id)}"]`).classList.add('sel');
  const link = n.vis_link ? `<p><a id="card-link" href="${esc(n.vis_link)}">feature card</a></p>` : '';
  d.innerHTML = `<h2 id="node-title">${esc(label(n))}</h2><p class="meta">${esc(n.node_id)} · ${esc(n.feature_type)}`
    + ` · layer ${esc(n.layer)} · position ${n.ctx_idx}</p>`
    + (n.activation != null ? `<p>activation <b id="node-act">${n.activation.toFixed(3)}</b></p>` : '')
    + (n.influence != null ? `<p>cumulative influence ${n.influence.toFixed(3)}</p>` : '') + link
    + `<h3>inputs</h3><table id="inputs">${edgeRows(G.links.filter(l => l.target === id), 'source')}</table>`
    + `<h3>outputs</h3><table id="outputs">${edgeRows(G.links.filter(l => l.source === id), 'target')}</table>`;
}
const feats = G.nodes.filter(n => kind(n) === 'feature').sort((a, b) => a.influence - b.influence).slice(0, 15);
document.getElementById('top').innerHTML = feats.map(n =>
  `<li data-id="${esc(n.node_id)}">${esc(label(n))} <span class="meta">(L${esc(n.layer)}, pos ${n.ctx_idx})</span></li>`).join('');
document.querySelectorAll('#top li').forEach(li => li.addEventListener('click', () => { location.hash = 'node=' + encodeURIComponent(li.dataset.id); }));
document.getElementById('counts').textContent = `${G.nodes.length} nodes, ${G.links.length} edges`
  + (drawn.length < G.links.length ? ` (the ${drawn.length} strongest drawn)` : '');
window.addEventListener('hashchange', show); show();
"""


MAX_DRAWN = 2000  # edges drawn; a pruned graph of a 16-token prompt keeps tens of thousands


def render(np_graph: dict[str, Any], *, title: str, summary: dict[str, Any] | None = None) -> str:
    """The page for a graph in Neuronpedia's JSON (saekit.circuits.files.neuronpedia_graph)."""
    data = json.dumps(np_graph, allow_nan=False).replace("</", "<\\/")
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in (summary or {}).items())
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<div id='main'><h1>{html.escape(title)}</h1><p class='meta'>"
        f"{html.escape(np_graph['metadata']['prompt'])} · <span id='counts'></span></p>"
        "<svg id='graph'></svg></div>"
        f"<div id='side'><table id='summary'>{rows}</table><div id='detail'></div>"
        "<h3>Top features (by influence)</h3><ol id='top'></ol></div>"
        f"<script id='graph-data' type='application/json'>{data}</script>"
        f"<script>const MAX_DRAWN = {MAX_DRAWN};{_SCRIPT}</script>"
        "</body></html>"
    )
