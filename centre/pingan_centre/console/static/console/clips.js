// The clip library page: each station's progress bar and state refresh every second
// from /clips/progress, without reloading the page.
"use strict";
(function () {
  const refresh = function () {
    fetch("/clips/progress", {credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (!data) return;
        data.clips.forEach(function (clip) {
          clip.stations.forEach(function (h) {
            const row = document.getElementById("cp-" + clip.id + "-" + h.station);
            if (!row) return;
            row.className = h.status;
            const bar = row.querySelector("progress");
            bar.max = h.chunks;
            bar.value = h.acked;
            row.querySelector(".count").textContent = h.acked + "/" + h.chunks;
            row.querySelector(".status").textContent = h.text;
          });
        });
      })
      .catch(function () {})  // the next turn tries again
      .finally(function () { setTimeout(refresh, 1000); });
  };
  if (document.querySelector("section.clip")) setTimeout(refresh, 1000);
})();
