// Home page job tables, as DIGITS' model pane: a filter box, sortable columns (click or Enter on
// a header, again to reverse; empty values last), a column chooser for the metric columns (the
// choice is kept in localStorage) and collapsible groups. Rows are sorted inside their group.
(function () {
  "use strict";
  const STORE = "caffeseg.home.columns.";

  function cellValue(row, index, kind) {
    const cell = row.children[index];
    if (!cell) return null;
    if (kind === "number") {
      const raw = cell.dataset.value;
      return raw === undefined || raw === "" ? null : Number(raw);
    }
    return cell.textContent.trim().toLowerCase();
  }

  function sortBy(table, header) {
    const index = [...header.parentNode.children].indexOf(header);
    const kind = header.dataset.sort;
    const ascending = header.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("th[aria-sort]").forEach(th => th.removeAttribute("aria-sort"));
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    table.querySelectorAll("tbody").forEach(body => {
      const rows = [...body.querySelectorAll("tr[data-job-id]")];
      rows.sort((a, b) => {
        const x = cellValue(a, index, kind), y = cellValue(b, index, kind);
        if (x === null && y === null) return 0;
        if (x === null) return 1;  // empty values last, either way
        if (y === null) return -1;
        const order = x < y ? -1 : x > y ? 1 : 0;
        return ascending ? order : -order;
      });
      rows.forEach(row => body.appendChild(row));
    });
  }

  function applyFilter(panel, text) {
    const words = text.toLowerCase().split(/\s+/).filter(Boolean);
    panel.querySelectorAll("tbody").forEach(body => {
      const group = body.querySelector("tr.group-row");
      const groupName = group ? group.dataset.group.toLowerCase() : "";
      let shown = 0;
      body.querySelectorAll("tr[data-job-id]").forEach(row => {
        const hay = row.textContent.toLowerCase() + " " + groupName;
        const match = words.every(w => hay.includes(w));
        row.classList.toggle("filtered-out", !match);
        if (match) shown += 1;
      });
      if (group) group.hidden = words.length > 0 && shown === 0;
    });
  }

  function showColumn(panel, name, visible) {
    panel.querySelectorAll('[data-metric="' + CSS.escape(name) + '"]').forEach(cell => { cell.hidden = !visible; });
  }

  document.querySelectorAll(".tab-panel").forEach(panel => {
    const kind = panel.id.replace("panel-", "");
    const saved = JSON.parse(localStorage.getItem(STORE + kind) || "null");
    panel.querySelectorAll("[data-col-toggle]").forEach(box => {
      const name = box.dataset.colToggle;
      if (saved && Object.prototype.hasOwnProperty.call(saved, name)) box.checked = saved[name];
      showColumn(panel, name, box.checked);
      box.addEventListener("change", () => {
        showColumn(panel, name, box.checked);
        const choice = {};
        panel.querySelectorAll("[data-col-toggle]").forEach(b => { choice[b.dataset.colToggle] = b.checked; });
        localStorage.setItem(STORE + kind, JSON.stringify(choice));
      });
    });
    const filter = panel.querySelector(".job-filter");
    if (filter) filter.addEventListener("input", () => applyFilter(panel, filter.value));
    const table = panel.querySelector("table.jobs");
    if (table) {
      table.querySelectorAll("th.sortable").forEach(th => {
        th.tabIndex = 0;
        th.addEventListener("click", () => sortBy(table, th));
        th.addEventListener("keydown", e => { if (e.key === "Enter") sortBy(table, th); });
      });
      table.querySelectorAll(".group-toggle").forEach(button => {
        button.addEventListener("click", () => {
          const open = button.getAttribute("aria-expanded") !== "false";
          button.setAttribute("aria-expanded", open ? "false" : "true");
          button.textContent = (open ? "▸ " : "▾ ") + button.textContent.slice(2);
          button.closest("tbody").querySelectorAll("tr[data-job-id]").forEach(row => row.classList.toggle("collapsed", open));
        });
      });
    }
    const action = panel.querySelector(".bulk-action"), group = panel.querySelector(".bulk-group");
    if (action && group) {
      const sync = () => { group.hidden = action.value !== "group"; };
      action.addEventListener("change", sync);
      sync();
    }
  });
})();
