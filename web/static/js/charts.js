// A small self-written SVG line chart: several series sharing an x axis, optional log-free y range.
(function () {
  "use strict";
  const NS = "http://www.w3.org/2000/svg";
  const COLORS = ["#2f6fde", "#e0543c", "#1f9d55", "#c77c02", "#8e44ad", "#0e9aa7", "#d6336c", "#5c6b7a"];

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const k in attrs) node.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(node);
    return node;
  }

  function niceTicks(lo, hi, count) {
    if (!isFinite(lo) || !isFinite(hi)) return [];
    if (hi === lo) { hi = lo + 1; }
    const raw = (hi - lo) / count;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map(m => m * mag).find(s => s >= raw) || raw;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    return out;
  }

  function fmt(v) {
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(1);
    return +v.toPrecision(4) + "";
  }

  class LineChart {
    constructor(container, title, opts) {
      this.opts = Object.assign({ xLabel: "epoch", height: 200 }, opts || {});
      this.series = new Map();
      this.root = document.createElement("div");
      this.root.className = "chart";
      this.titleEl = document.createElement("div");
      this.titleEl.className = "chart-title";
      this.titleEl.textContent = title;
      this.root.appendChild(this.titleEl);
      this.svg = el("svg", { viewBox: "0 0 480 " + this.opts.height, preserveAspectRatio: "none" }, this.root);
      container.appendChild(this.root);
    }
    ensure(name) {
      if (!this.series.has(name)) {
        const color = COLORS[this.series.size % COLORS.length];
        this.series.set(name, { points: [], color: color });
        const key = document.createElement("span");
        key.className = "chart-key";
        key.innerHTML = '<i style="background:' + color + '"></i>';
        key.appendChild(document.createTextNode(name));
        this.titleEl.appendChild(key);
      }
      return this.series.get(name);
    }
    add(name, points) {
      const s = this.ensure(name);
      for (const p of points) if (isFinite(p[1])) s.points.push(p);
    }
    render() {
      const W = 480, H = this.opts.height, L = 48, R = 10, T = 10, B = 24;
      while (this.svg.firstChild) this.svg.removeChild(this.svg.firstChild);
      let xs = [], ys = [];
      this.series.forEach(s => s.points.forEach(p => { xs.push(p[0]); ys.push(p[1]); }));
      if (!xs.length) return;
      let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
      if (x1 === x0) x1 = x0 + 1;
      if (y1 === y0) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
      const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
      const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R);
      const sy = y => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
      niceTicks(y0, y1, 4).forEach(v => {
        el("line", { x1: L, x2: W - R, y1: sy(v), y2: sy(v), class: "grid" }, this.svg);
        el("text", { x: L - 4, y: sy(v) + 3, "text-anchor": "end" }, this.svg).textContent = fmt(v);
      });
      niceTicks(x0, x1, 6).forEach(v => {
        el("text", { x: sx(v), y: H - 8, "text-anchor": "middle" }, this.svg).textContent = fmt(v);
      });
      el("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }, this.svg);
      el("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }, this.svg);
      el("text", { x: W - R, y: H - B - 4, "text-anchor": "end" }, this.svg).textContent = this.opts.xLabel;
      this.series.forEach(s => {
        if (!s.points.length) return;
        const pts = s.points.slice().sort((a, b) => a[0] - b[0]);
        const d = pts.map((p, i) => (i ? "L" : "M") + sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join("");
        el("path", { d: d, class: "line", stroke: s.color, "vector-effect": "non-scaling-stroke" }, this.svg);
        if (pts.length === 1) el("circle", { cx: sx(pts[0][0]), cy: sy(pts[0][1]), r: 3, fill: s.color }, this.svg);
      });
    }
    pointCount() { let n = 0; this.series.forEach(s => { n += s.points.length; }); return n; }
  }

  window.LineChart = LineChart;
})();
