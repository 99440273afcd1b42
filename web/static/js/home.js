// Home page: while any job is waiting or running, refresh the status badges and progress bars.
(function () {
  "use strict";
  const ACTIVE = ["running", "waiting", "queued", "initialized"];
  const CLASS = { done: "ok", running: "run", waiting: "wait", initialized: "wait", queued: "wait",
                  error: "err", aborted: "warn", interrupted: "warn" };
  function activeRows() {
    return [...document.querySelectorAll("tr[data-job-id]")].filter(r => ACTIVE.includes((r.dataset.status || "").toLowerCase()));
  }
  async function refresh() {
    if (!activeRows().length) return;
    try {
      const jobs = await apiFetch("/api/jobs");
      jobs.forEach(job => {
        const row = document.querySelector('tr[data-job-id="' + CSS.escape(job.id) + '"]');
        if (!row) return;
        row.dataset.status = job.status;
        const badge = row.querySelector(".badge");
        if (badge) {
          badge.textContent = job.status;
          badge.className = "badge badge-" + (CLASS[String(job.status).toLowerCase()] || "wait");
        }
        const bar = row.querySelector(".progress .bar");
        if (bar && job.progress !== null && job.progress !== undefined) bar.style.width = (job.progress * 100).toFixed(1) + "%";
      });
    } catch (e) { /* try again next time */ }
    setTimeout(refresh, 3000);
  }
  setTimeout(refresh, 3000);
})();

// Pretrained tab: while a known model is being prepared, show its download progress; reload
// the page when the preparation ends (its weights are then ready, or it shows the error).
(function () {
  "use strict";
  const running = () => [...document.querySelectorAll('[data-prepare][data-state="running"]')];
  function size(bytes) {
    const units = ["B", "KB", "MB", "GB"];
    let value = bytes, unit = 0;
    while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
    return (unit ? value.toFixed(1) : String(value)) + " " + units[unit];
  }
  async function poll() {
    if (!running().length) return;
    try {
      const models = await apiFetch("/api/pretrained");
      for (const row of running()) {
        const model = models.find(m => m.id === row.dataset.prepare);
        const prep = model && model.preparation;
        if (!prep || prep.state !== "running") { window.location.reload(); return; }
        const text = row.querySelector(".prepare-progress");
        if (text) text.textContent = prep.phase === "convert" ? "converting" :
          size(prep.done || 0) + (prep.total ? " of " + size(prep.total) : "");
      }
    } catch (e) { /* try again next time */ }
    setTimeout(poll, 1500);
  }
  setTimeout(poll, 1500);
})();

// Bulk actions: say when nothing is selected (instead of asking to confirm nothing), and name
// the action and the number of jobs in the confirmation.
(function () {
  "use strict";
  document.querySelectorAll("form.bulk-form").forEach(function (form) {
    const button = form.querySelector("button[data-confirm]");
    if (!button) return;
    button.addEventListener("click", function (ev) {
      const chosen = form.querySelectorAll("input[name=job_ids]:checked").length;
      let note = form.querySelector(".bulk-note");
      if (!chosen) {
        ev.preventDefault();
        ev.stopPropagation();  // before the page-wide confirmation handler
        if (!note) {
          note = document.createElement("span");
          note.className = "bulk-note error-text small";
          button.after(note);
        }
        note.textContent = "Select at least one job first.";
        return;
      }
      if (note) note.remove();
      const action = form.querySelector("select[name=action]").value;
      button.dataset.confirm = (action === "delete" ? "Delete " : "Abort ") + chosen +
        " selected job" + (chosen > 1 ? "s" : "") + (action === "delete" ? " and their files?" : "?");
    });
  });
})();
