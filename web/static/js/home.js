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
