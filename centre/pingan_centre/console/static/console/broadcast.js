// The broadcasts pages: the uploaded recording plays in the browser before it is sent,
// and a broadcast's results refresh every 2 s while its page is open.
"use strict";
(function () {
  const clip = document.getElementById("clip");
  const preview = document.getElementById("preview");
  if (clip && preview) {
    clip.addEventListener("change", function () {
      if (preview.src) URL.revokeObjectURL(preview.src);
      const file = clip.files && clip.files[0];
      preview.hidden = !file;
      if (file) {
        preview.src = URL.createObjectURL(file);
        const radio = document.querySelector('input[name="content"][value="clip"]');
        if (radio) radio.checked = true;
      }
    });
  }
  const box = document.getElementById("results");
  if (box) {
    const id = box.dataset.id;
    const refresh = function () {
      fetch("/broadcast/results?id=" + encodeURIComponent(id), {credentials: "same-origin"})
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) { if (data) box.innerHTML = data.html; })
        .catch(function () {})  // the next turn tries again
        .finally(function () { setTimeout(refresh, 2000); });
    };
    setTimeout(refresh, 2000);
  }
})();
