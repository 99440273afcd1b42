// Test Many request page: follow the progress (status JSON) and reload once it has finished.
(function () {
  "use strict";
  var box = document.getElementById("tm-progress");
  if (!box || box.getAttribute("data-state") !== "Running") { return; }
  var url = box.getAttribute("data-status-url");
  function poll() {
    fetch(url, { headers: { "Accept": "application/json" } }).then(function (r) { return r.json(); }).then(function (data) {
      var s = data.status || {};
      var bar = document.getElementById("tm-bar");
      bar.max = s.total || 1;
      bar.value = s.done || 0;
      document.getElementById("tm-count").textContent = (s.done || 0) + " / " + (s.total || "?");
      document.getElementById("tm-state").textContent = s.state;
      if (s.state === "Running") { setTimeout(poll, 1000); } else { window.location.reload(); }
    }).catch(function () { setTimeout(poll, 3000); });
  }
  setTimeout(poll, 500);
}());
