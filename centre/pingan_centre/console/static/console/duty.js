// The duty screen: live cards over server-sent events, the alarm tone, elapsed times.
// No libraries, nothing from outside the centre.
(function () {
  "use strict";
  var cards = document.getElementById("cards");
  var banner = document.getElementById("sound-banner");
  var soundOn = document.getElementById("sound-on");
  var lost = document.getElementById("link-lost");
  var overlay = document.getElementById("alarm-overlay");
  var audio = null;      // AudioContext, made on the first click (browsers require one)
  var ringing = false;

  function csrf() {
    var m = document.cookie.match(/(?:^|; )csrftoken=([^;]+)/);
    return m ? decodeURIComponent(m[1]) : "";
  }

  // --- sound -------------------------------------------------------------------------
  function armed() { return audio !== null && audio.state === "running"; }

  // For whoever looks at the page (a technician's console, the browser tests).
  window.pinganSound = function () { return audio === null ? "none" : audio.state; };

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

  // --- cards: applied from the server-sent events themselves ------------------------
  // A `snapshot` (on connect, after a gap, every 30 s) or a `change` carries the cards
  // that changed, rendered by the centre for this user, and the order of every open
  // alarm. Cards not in the order go. Nothing is fetched.
  var held = {};         // id -> html of a card the officer is typing in, applied on leaving

  function typing() {
    var el = document.activeElement;
    return el && cards.contains(el) && /^(INPUT|SELECT|TEXTAREA)$/.test(el.tagName);
  }

  function busyCard() {
    return typing() ? document.activeElement.closest(".card") : null;
  }

  function fragment(html) {
    var t = document.createElement("template");
    t.innerHTML = html.trim();
    return t.content.firstElementChild;
  }

  function apply(data) {
    var busy = busyCard();
    var fresh = {};
    Object.keys(data.cards).forEach(function (id) {
      var key = "alarm-" + id;
      if (busy && busy.id === key) { held[key] = data.cards[id]; return; }
      delete held[key];  // newer than what was held for it
      fresh[key] = fragment(data.cards[id]);
    });
    var wanted = {};
    var order = [];
    data.order.forEach(function (id) {
      var key = "alarm-" + id;
      wanted[key] = true;
      var el = fresh[key] || document.getElementById(key);
      if (el) { order.push(el); }
    });
    // Cards that closed go (the one being typed in goes when the officer leaves it).
    Array.prototype.slice.call(cards.children).forEach(function (el) {
      if (el === busy) { if (!wanted[el.id]) { held[el.id] = null; } return; }
      if (!wanted[el.id] || (fresh[el.id] && fresh[el.id] !== el)) { el.remove(); }
    });
    // Into place, each after the one before it; the card being typed in never moves
    // (moving it would take the cursor out of its field), the others move around it.
    var prev = null;
    order.forEach(function (el) {
      if (el !== busy) {
        var at = prev ? prev.nextElementSibling : cards.firstElementChild;
        if (at !== el) { cards.insertBefore(el, at); }
      }
      prev = el;
    });
    calm();
    alarmScreen();
    tick();
    window.pinganVersion = data.v;
    window.pinganRenders = (window.pinganRenders || 0) + 1;
  }

  function calm() {
    var n = cards.querySelectorAll(".card").length;
    var quiet = cards.querySelector(".calm");
    if (n && quiet) { quiet.remove(); }
    if (!n && !quiet) {
      var p = document.createElement("p");
      p.className = "calm";
      p.textContent = cards.dataset.calm;
      cards.appendChild(p);
    }
    document.getElementById("count").textContent = n ? String(n) : "";
    document.title = (n ? "(" + n + ") " : "") + document.title.replace(/^\(\d+\) /, "");
  }

  function release() {
    if (typing()) { return; }
    Object.keys(held).forEach(function (key) {
      var el = document.getElementById(key);
      if (el && held[key] === null) { el.remove(); }
      else if (el) { el.replaceWith(fragment(held[key])); }
    });
    held = {};
    calm();
    alarmScreen();
    tick();
  }

  cards.addEventListener("focusout", function () { setTimeout(release, 50); });

  cards.addEventListener("submit", function (ev) {
    // Act without reloading the page: a reload would silence the armed alarm sound. The
    // changed card comes back over the event stream.
    ev.preventDefault();
    var form = ev.target;
    var data = new FormData(form);
    if (ev.submitter && ev.submitter.name) { data.append(ev.submitter.name, ev.submitter.value); }
    fetch(form.action, {
      method: "POST", body: data, credentials: "same-origin",
      headers: { "X-CSRFToken": csrf(), "Accept": "application/json" }
    }).then(function (r) {
      if (r.redirected) { window.location.reload(); return null; }
      if (!r.ok) { return r.text().then(function (t) { window.alert(t || r.status); }); }
      return null;
    }).then(function () {
      if (document.activeElement) { document.activeElement.blur(); }
      release();
    });
  });

  // --- a new alarm takes the whole screen --------------------------------------------
  // Until someone acknowledges it: the overlay names the newest unacknowledged alarm
  // (village, station) with its own Acknowledge. "Show the card" puts it aside; the page
  // edge then flashes until every new alarm is acknowledged, and the next new alarm
  // takes the screen again.
  var putAside = {};

  function copyText(id, from) {
    document.getElementById(id).textContent = from ? from.textContent.trim() : "";
  }

  function alarmScreen() {
    var fresh = Array.prototype.slice.call(cards.querySelectorAll('.card[data-state="new"]'));
    var present = {};
    fresh.forEach(function (c) { present[c.id] = true; });
    Object.keys(putAside).forEach(function (id) { if (!present[id]) { delete putAside[id]; } });
    var waiting = fresh.filter(function (c) { return !putAside[c.id]; });
    document.body.classList.toggle("edge-flash", fresh.length > 0 && waiting.length === 0);
    if (!waiting.length) {
      overlay.hidden = true;
      overlay.dataset.alarm = "";
      return;
    }
    waiting.sort(function (a, b) { return Date.parse(b.dataset.raised) - Date.parse(a.dataset.raised); });
    var card = waiting[0];
    overlay.dataset.alarm = card.id;
    copyText("overlay-village", card.querySelector(".village"));
    copyText("overlay-station", card.querySelector(".station"));
    document.getElementById("overlay-more").textContent =
      waiting.length > 1 ? "+" + (waiting.length - 1) : "";
    document.getElementById("overlay-elapsed").dataset.since = card.dataset.raised;
    document.getElementById("overlay-ack").hidden = card.querySelector("button.ack") === null;
    overlay.hidden = false;
  }

  function overlayAck() {
    var card = document.getElementById(overlay.dataset.alarm || "");
    var button = card ? card.querySelector("button.ack") : null;
    if (button) { button.click(); }  // the card's own form: the same path as on the card
  }

  function overlayAside() {
    cards.querySelectorAll('.card[data-state="new"]').forEach(function (c) { putAside[c.id] = true; });
    var card = document.getElementById(overlay.dataset.alarm || "");
    alarmScreen();
    if (card) { card.scrollIntoView({ block: "center" }); }
  }

  // --- the language, switched in place -----------------------------------------------
  // A reload would end the page's AudioContext, and browsers start a new one only after
  // another click: the officer would not hear the next alarm. The choice is posted, the
  // page's texts are taken from the page in the new language, and the event stream
  // reconnects (its snapshot brings every card in the new language).
  function relabel(html) {
    var doc = new DOMParser().parseFromString(html, "text/html");
    if (!doc.getElementById("cards")) { return false; }
    document.documentElement.lang = doc.documentElement.lang;
    document.title = doc.title;
    var header = document.querySelector("header.top");
    var fresh = doc.querySelector("header.top");
    if (header && fresh) { header.replaceWith(document.importNode(fresh, true)); }
    doc.querySelectorAll("[data-i18n][id]").forEach(function (el) {
      var mine = document.getElementById(el.id);
      if (mine) { mine.innerHTML = el.innerHTML; }
    });
    cards.dataset.calm = doc.getElementById("cards").dataset.calm;
    var quiet = cards.querySelector(".calm");
    if (quiet) { quiet.textContent = cards.dataset.calm; }
    if (lostSince !== null) {
      document.getElementById("lost-at").textContent = lostSince.toTimeString().slice(0, 8);
    }
    showSoundState();
    calm();
    alarmScreen();
    listen();
    window.pinganRelabels = (window.pinganRelabels || 0) + 1;
    return true;
  }

  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (!form.classList || !form.classList.contains("lang")) { return; }
    ev.preventDefault();
    var data = new FormData(form);
    if (ev.submitter && ev.submitter.name) { data.append(ev.submitter.name, ev.submitter.value); }
    // set_language answers with a redirect to this page, followed: the page, in the new
    // language (its cookie is set on the way).
    fetch(form.action, { method: "POST", body: data, credentials: "same-origin",
                         headers: { "X-CSRFToken": csrf() } })
      .then(function (r) { return r.ok ? r.text() : ""; })
      .then(function (html) { if (!html || !relabel(html)) { linkLost(); } },
            function () { linkLost(); });
  });

  // --- elapsed time ------------------------------------------------------------------
  function pad(n) { return n < 10 ? "0" + n : String(n); }
  function tick() {
    var now = Date.now();
    document.querySelectorAll(".elapsed[data-since]").forEach(function (el) {
      var s = Math.max(0, Math.floor((now - Date.parse(el.dataset.since)) / 1000));
      var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
      el.textContent = (h ? h + ":" + pad(m) : String(m)) + ":" + pad(s % 60);
    });
  }

  // --- live updates ------------------------------------------------------------------
  // The screen never replaces itself with an error page: whatever goes wrong with the
  // centre (a restart, a server error, the network), it keeps the cards it shows and
  // their sound, says since when the link is lost, and tries again. Only a centre that
  // says "log in" (the session is over) takes the page to the login form.
  var source = null;
  var lostSince = null;
  var RETRY_MS = 2000;

  function linkUp() {
    lostSince = null;
    lost.hidden = true;
    document.body.dataset.link = "up";
  }

  function linkLost() {
    if (lostSince === null) {
      lostSince = new Date();
      var at = document.getElementById("lost-at");
      if (at) { at.textContent = lostSince.toTimeString().slice(0, 8); }
    }
    lost.hidden = false;
    document.body.dataset.link = "lost";
  }

  function listen() {
    if (source !== null) { source.close(); }
    source = new EventSource(cards.dataset.stream);
    var mine = source;
    function take(ev) { linkUp(); apply(JSON.parse(ev.data)); }
    // A snapshot comes first on every (re)connect: it catches up on anything missed.
    source.addEventListener("snapshot", take);
    source.addEventListener("change", take);
    source.onerror = function () {
      linkLost();
      // While the browser retries by itself (the centre is away) the state is
      // CONNECTING; an answer that is not a stream (an error page, a refusal) closes it.
      if (mine.readyState === EventSource.CLOSED && mine === source) {
        setTimeout(probe, RETRY_MS);
      }
    };
  }

  function probe() {
    window.pinganProbes = (window.pinganProbes || 0) + 1;
    // Why was the stream refused? Asked without following redirects: a redirect is the
    // login form (the session is over), anything else is the centre not well yet.
    fetch(cards.dataset.probe, { credentials: "same-origin", redirect: "manual",
                                 cache: "no-store" })
      .then(function (r) {
        if (r.type === "opaqueredirect" || r.status === 401 || r.status === 403) {
          window.location.reload();
        } else if (r.ok) {
          listen();
        } else {
          setTimeout(probe, RETRY_MS);
        }
      }, function () { setTimeout(probe, RETRY_MS); });
  }

  // Delegated: a language switch replaces these buttons (relabel).
  document.addEventListener("click", function (ev) {
    var el = ev.target.closest ? ev.target.closest("button") : null;
    if (!el) { return; }
    if (el.id === "enable-sound") { enableSound(); }
    else if (el.id === "test-sound" && armed()) { var t = audio.currentTime + 0.01; beep(960, t, 0.3, 0.35); }
    else if (el.id === "overlay-ack") { overlayAck(); }
    else if (el.id === "overlay-card") { overlayAside(); }
  });
  // Any click on the page also counts: the browser allows sound after it.
  document.addEventListener("click", function () { if (!armed()) { enableSound(); } }, true);
  showSoundState();
  alarmScreen();
  tick();
  ring();
  setInterval(tick, 1000);
  setInterval(ring, 1200);
  listen();
}());
