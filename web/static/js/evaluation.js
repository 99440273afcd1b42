// Evaluation page: sortable, filterable record table and the EF Bland–Altman / correlation plots.
// Data come from the page's data-* attributes (no inline scripts: the CSP allows scripts from self only).
(function () {
  "use strict";

  // -- record table: click (or Enter on) a header to sort, again to reverse; filters by patient and phase
  const table = document.getElementById("record-table");
  if (table) {
    const body = table.tBodies[0];
    const headers = Array.from(table.tHead.rows[0].cells).filter(th => th.dataset.key);
    const caseFilter = document.getElementById("filter-case");
    const phaseFilter = document.getElementById("filter-phase");
    const count = document.getElementById("record-count");
    let sortedBy = null, ascending = true;

    function cellValue(row, index, type) {
      const raw = row.cells[index].dataset.value;
      if (type === "number") {
        const v = parseFloat(raw);
        return Number.isNaN(v) ? null : v;
      }
      return row.cells[index].textContent.trim();
    }

    function sortBy(th) {
      const index = Array.from(th.parentNode.cells).indexOf(th);
      ascending = sortedBy === th ? !ascending : true;
      sortedBy = th;
      const type = th.dataset.type;
      const rows = Array.from(body.rows);
      rows.sort((a, b) => {
        const x = cellValue(a, index, type), y = cellValue(b, index, type);
        if (x === null && y === null) return 0;
        if (x === null) return 1;   // missing values last, either direction
        if (y === null) return -1;
        const order = type === "number" ? x - y : String(x).localeCompare(String(y), undefined, { numeric: true });
        return ascending ? order : -order;
      });
      rows.forEach(r => body.appendChild(r));
      headers.forEach(h => h.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    }

    headers.forEach(th => {
      th.addEventListener("click", () => sortBy(th));
      th.addEventListener("keydown", e => { if (e.key === "Enter") sortBy(th); });
    });

    function applyFilters() {
      const c = caseFilter ? caseFilter.value : "", p = phaseFilter ? phaseFilter.value : "";
      let shown = 0;
      Array.from(body.rows).forEach(row => {
        const visible = (!c || row.dataset.case === c) && (!p || row.dataset.phase === p);
        row.hidden = !visible;
        if (visible) shown += 1;
      });
      if (count) count.textContent = shown + " of " + body.rows.length;
    }
    [caseFilter, phaseFilter].forEach(el => el && el.addEventListener("change", applyFilters));
  }

  // -- EF plots (Plotly from /vendor/plotly.min.js)
  const box = document.getElementById("ef-plots");
  if (!box || !window.Plotly) return;
  const points = JSON.parse(box.dataset.points || "[]");
  const agreement = JSON.parse(box.dataset.agreement || "{}");
  if (!points.length) { box.hidden = true; return; }
  const CONFIG = { displaylogo: false, showLink: false, showSendToCloud: false, showEditInChartStudio: false,
                   responsive: true, modeBarButtonsToRemove: ["select2d", "lasso2d", "toImage"] };
  const LAYOUT = { margin: { l: 56, r: 16, t: 16, b: 48 }, showlegend: false, hovermode: "closest" };
  const names = points.map(p => p.case);

  const means = points.map(p => (p.pred + p.expert) / 2);
  const diffs = points.map(p => p.pred - p.expert);
  const lo = Math.min.apply(null, means), hi = Math.max.apply(null, means);
  const line = (y, dash, label) => ({ x: [lo, hi], y: [y, y], mode: "lines", name: label,
                                      line: { dash: dash, color: "#5c6b7a" }, hoverinfo: "name+y" });
  const ba = [{ x: means, y: diffs, text: names, mode: "markers", name: "patients", type: "scatter",
                marker: { color: "#2f6fde", size: 9 }, hovertemplate: "%{text}<br>mean %{x:.1f} %<br>diff %{y:.1f} %<extra></extra>" }];
  if (agreement && agreement.n) {
    ba.push(line(agreement.bias, "solid", "bias"), line(agreement.upper, "dash", "+1.96 sd"),
            line(agreement.lower, "dash", "−1.96 sd"));
  }
  Plotly.newPlot("ef-bland-altman", ba, Object.assign({}, LAYOUT, {
    xaxis: { title: { text: "mean of predicted and expert EF (%)" } },
    yaxis: { title: { text: "predicted − expert EF (%)" }, zeroline: true } }), CONFIG);

  const all = points.map(p => p.pred).concat(points.map(p => p.expert));
  const a = Math.min.apply(null, all) - 2, b = Math.max.apply(null, all) + 2;
  Plotly.newPlot("ef-correlation", [
    { x: points.map(p => p.expert), y: points.map(p => p.pred), text: names, mode: "markers", type: "scatter",
      name: "patients", marker: { color: "#e0543c", size: 9 },
      hovertemplate: "%{text}<br>expert %{x:.1f} %<br>predicted %{y:.1f} %<extra></extra>" },
    { x: [a, b], y: [a, b], mode: "lines", name: "identity", line: { dash: "dot", color: "#5c6b7a" }, hoverinfo: "skip" }
  ], Object.assign({}, LAYOUT, {
    xaxis: { title: { text: "expert EF (%)" }, range: [a, b] },
    yaxis: { title: { text: "predicted EF (%)" }, range: [a, b] },
    annotations: agreement && agreement.r !== null && agreement.r !== undefined ? [{
      xref: "paper", yref: "paper", x: 0.02, y: 0.98, showarrow: false, text: "r = " + agreement.r.toFixed(3) }] : [] }),
    CONFIG);
}());
