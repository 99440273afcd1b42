// Inference result: Caffe's internal split blobs (*_split_N) are hidden unless asked for.
(function () {
  "use strict";
  const toggle = document.getElementById("show-split-blobs");
  if (!toggle) return;
  toggle.addEventListener("change", () => {
    document.querySelectorAll("#layer-table tr.split-blob").forEach(tr => { tr.hidden = !toggle.checked; });
  });
})();
