// The duty screen: live cards over server-sent events, the alarm tone, elapsed times.
// No libraries, nothing from outside the centre.
(function () {
  "use strict";
  var cards = document.getElementById("cards");
  var banner = document.getElementById("sound-banner");
  var soundOn = document.getElementById("sound-on");
  var lost = document.getElementById("link-lost");
  var audio = null;      // AudioContext, made on the first click (browsers require one)
  var ringing = false;
  var deferred = false;  // a refresh waits while an officer is typing in a card

  function csrf() {
    var m = document.cookie.match(/(?:^|; )csrftoken=([^;]+)/);
    return m ? decodeURIComponent(m[1]) : "";
  }

  // --- sound -------------------------------------------------------------------------
  function armed() { return audio !== null && audio.state === "running"; }

  function showSoundState() {
    banner.hidden = armed();
    soundOn.hidden = !armed();
    document.body.dataset.sound = armed() ? "armed" : "off";
  }

  function enableSound() {
    if (audio === null) {
      var Ctx = window.AudioContext || window.webkitAudioContext;
      audio = new Ctx();
    }
    audio.resume().then(showSoundState);
    showSoundState();
  }

  function beep(freq, start, length, gain) {
    var osc = audio.createOscillator();
    var amp = audio.createGain();
    osc.type = "square";
    osc.frequency.value = freq;
    amp.gain.setValueAtTime(0.0001, start);
    amp.gain.exponentialRampToValueAtTime(gain, start + 0.02);
    amp.gain.setValueAtTime(gain, start + length - 0.03);
    amp.gain.exponentialRampToValueAtTime(0.0001, start + length);
    osc.connect(amp).connect(audio.destination);
    osc.start(start);
    osc.stop(start + length + 0.01);
  }

  function ring() {
    // A two-tone alarm while any alarm is unacknowledged; louder once escalated.
    var unacked = cards.querySelectorAll('.card[data-state="new"]');
    var loud = cards.querySelector('.card[data-state="new"].loud') !== null;
    ringing = unacked.length > 0;
    document.body.dataset.ringing = ringing ? "1" : "0";
    document.body.classList.toggle("alarm-flash", loud);
    if (!ringing || !armed()) { return; }
    var t = audio.currentTime + 0.01;
    var gain = loud ? 0.9 : 0.35;
    beep(960, t, 0.35, gain);
    beep(700, t + 0.4, 0.35, gain);
  }

  // --- cards -------------------------------------------------------------------------
  function typing() {
    var el = document.activeElement;
    return el && cards.contains(el) && /^(INPUT|SELECT|TEXTAREA)$/.test(el.tagName);
  }

  function refresh() {
    if (typing()) { deferred = true; return; }
    fetch(cards.dataset.url, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.redirected || !r.ok) { window.location.reload(); return null; }
        return r.text();
      })
      .then(function (html) {
        if (html === null) { return; }
        cards.innerHTML = html;
        tick();
        var n = cards.querySelectorAll(".card").length;
        document.getElementById("count").textContent = n ? String(n) : "";
        document.title = (n ? "(" + n + ") " : "") + document.title.replace(/^\(\d+\) /, "");
        window.pinganRenders = (window.pinganRenders || 0) + 1;
      });
  }

  cards.addEventListener("focusout", function () {
    setTimeout(function () { if (deferred && !typing()) { deferred = false; refresh(); } }, 50);
  });

  cards.addEventListener("submit", function (ev) {
    // Act without reloading the page: a reload would silence the armed alarm sound.
    ev.preventDefault();
    var form = ev.target;
    var data = new FormData(form);
    if (ev.submitter && ev.submitter.name) { data.append(ev.submitter.name, ev.submitter.value); }
    fetch(form.action, {
      method: "POST", body: data, credentials: "same-origin",
      headers: { "X-CSRFToken": csrf(), "Accept": "application/json" }
    }).then(function (r) {
      if (!r.ok) { return r.text().then(function (t) { window.alert(t || r.status); }); }
      return null;
    }).then(function () { deferred = false; if (document.activeElement) { document.activeElement.blur(); } refresh(); });
  });

  // --- elapsed time ------------------------------------------------------------------
  function pad(n) { return n < 10 ? "0" + n : String(n); }
  function tick() {
    var now = Date.now();
    cards.querySelectorAll(".elapsed").forEach(function (el) {
      var s = Math.max(0, Math.floor((now - Date.parse(el.dataset.since)) / 1000));
      var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
      el.textContent = (h ? h + ":" + pad(m) : String(m)) + ":" + pad(s % 60);
    });
  }

  // --- live updates ------------------------------------------------------------------
  function listen() {
    var source = new EventSource(cards.dataset.stream);
    // The first `change` arrives on connect: it catches up on anything since the page.
    source.addEventListener("change", refresh);
    source.onopen = function () { lost.hidden = true; };
    source.onerror = function () { lost.hidden = false; };
  }

  document.getElementById("enable-sound").addEventListener("click", enableSound);
  document.getElementById("test-sound").addEventListener("click", function () {
    if (armed()) { var t = audio.currentTime + 0.01; beep(960, t, 0.3, 0.35); }
  });
  // Any click on the page also counts: the browser allows sound after it.
  document.addEventListener("click", function () { if (!armed()) { enableSound(); } }, true);
  showSoundState();
  tick();
  ring();
  setInterval(tick, 1000);
  setInterval(ring, 1200);
  // Station health on the cards (silent, offline) changes without an alarm event.
  setInterval(refresh, 30000);
  listen();
}());
