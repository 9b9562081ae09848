// A schedule's page: each station's state against the centre's, and how its last push
// went, redrawn every 3 s while the page is open (a push again turns rows "in sync").
"use strict";
(function () {
  const box = document.getElementById("sync");
  if (!box) return;
  const id = box.dataset.id;
  const refresh = function () {
    fetch("/schedule/status?id=" + encodeURIComponent(id), {credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) { if (data) box.innerHTML = data.html; })
      .catch(function () {})  // the next turn tries again
      .finally(function () { setTimeout(refresh, 3000); });
  };
  setTimeout(refresh, 3000);
})();
