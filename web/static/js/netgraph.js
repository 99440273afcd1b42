// Draws the network returned by /api/network/inspect: one box per layer, top to bottom, with
// edges from each blob's producer to its consumers, and a table of every blob's shape.
(function () {
  "use strict";
  const NS = "http://www.w3.org/2000/svg";
  function el(name, attrs, parent) {
    const n = document.createElementNS(NS, name);
    for (const k in attrs) n.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(n);
    return n;
  }
  function kindOf(layer) {
    if (/Loss$/.test(layer.type)) return "loss";
    if (layer.type === "Python") return "python";
    if (/Data$|^Input$/.test(layer.type)) return "data";
    return "";
  }

  function draw(container, net) {
    container.innerHTML = "";
    const wrap = document.createElement("div");
    wrap.className = "netviz";
    container.appendChild(wrap);
    const layers = net.layers || [];
    const rowH = 46, boxW = 230, W = 420;
    const svg = el("svg", { viewBox: "0 0 " + W + " " + (layers.length * rowH + 10), class: "net-graph" }, wrap);
    const producer = {};
    const pos = layers.map((l, i) => ({ x: 30 + (i % 2) * 60, y: 6 + i * rowH }));
    layers.forEach((layer, i) => {
      (layer.bottom || []).forEach(b => {
        const src = producer[b];
        if (src === undefined || src === i) return;
        const a = pos[src], c = pos[i];
        const x1 = a.x + boxW, y1 = a.y + 18, x2 = c.x + boxW, y2 = c.y + 18;
        const bend = 30 + Math.min(80, (i - src) * 6);
        el("path", { class: "edge", d: `M${x1},${y1} C${x1 + bend},${y1} ${x2 + bend},${y2} ${x2},${y2}` }, svg);
      });
      (layer.top || []).forEach(t => { producer[t] = i; });
    });
    layers.forEach((layer, i) => {
      const g = el("g", { class: "node " + kindOf(layer), transform: `translate(${pos[i].x},${pos[i].y})` }, svg);
      el("rect", { width: boxW, height: 36, rx: 6 }, g);
      el("text", { x: 8, y: 15 }, g).textContent = layer.name + " (" + layer.type + ")";
      const shapes = (layer.top || []).map(t => (net.blobs && net.blobs[t]) ? "[" + net.blobs[t].join("×") + "]" : "").join(" ");
      el("text", { x: 8, y: 29, class: "sub" }, g).textContent = (layer.top || []).join(", ") + " " + shapes;
    });
    const table = document.createElement("table");
    table.className = "plain small";
    table.innerHTML = "<thead><tr><th>Blob</th><th>Shape</th></tr></thead>";
    const body = document.createElement("tbody");
    Object.keys(net.blobs || {}).forEach(name => {
      const tr = document.createElement("tr");
      tr.innerHTML = "<td></td><td class='mono'></td>";
      tr.children[0].textContent = name;
      tr.children[1].textContent = net.blobs[name].length ? net.blobs[name].join(" × ") : "scalar";
      body.appendChild(tr);
    });
    table.appendChild(body);
    const side = document.createElement("div");
    const phase = document.createElement("p");
    phase.className = "muted small";
    phase.textContent = (net.note || "") + (net.phase ? " Phase: " + net.phase + "." : "");
    side.appendChild(phase);
    side.appendChild(table);
    wrap.appendChild(side);
  }

  function showError(container, err) {
    container.innerHTML = "";
    const box = document.createElement("div");
    box.className = "net-error";
    const d = err.data || {};
    box.textContent = (d.line ? "line " + d.line + (d.column ? ", column " + d.column : "") + ": " : "") + (d.error || err.message);
    container.appendChild(box);
  }

  window.NetGraph = { draw: draw, showError: showError };
})();
