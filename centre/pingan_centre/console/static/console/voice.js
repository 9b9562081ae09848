// Live voice (喊话): hold the button and speak. The microphone is encoded to Opus here,
// in the browser (WebCodecs AudioEncoder, 20 ms frames, no container), and each frame
// goes over the page's WebSocket as it comes: 8 bytes of capture time (Unix ms, float64
// big-endian), then the Opus packet. The centre relays them to the stations over MQTT
// (centre/pingan_centre/console/voice.py). The table below shows each loudspeaker's
// report, refreshed every second.
"use strict";
(function () {
  const button = document.getElementById("talk");
  const state = document.getElementById("voice-state");
  const box = document.getElementById("voice-results");
  let socket = null, mic = null, encoder = null, reader = null;
  let speaking = false, sending = false;  // feeding the encoder; relaying what it gives
  let offsetUs = null;  // capture timestamp (us) -> Unix time (us)
  let session = "";

  function say(key) { if (state) state.textContent = state.dataset[key] || key; }

  function target() {
    const form = document.getElementById("voice");
    const kind = form.querySelector('input[name="target"]:checked').value;
    let chosen = [];
    if (kind === "stations") {
      form.querySelectorAll('input[name="stations"]:checked').forEach(function (c) {
        chosen.push(c.value);
      });
    } else if (kind !== "all") {
      chosen = [form.querySelector('select[name="' + kind + '"]').value];
    }
    return {target: kind, chosen: chosen};
  }

  function connect() {
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/voice/ws";
    socket = new WebSocket(url);
    socket.binaryType = "arraybuffer";
    socket.onopen = function () { if (mic) { button.disabled = false; say("ready"); } };
    socket.onclose = function () { button.disabled = true; say("offline"); socket = null; };
    socket.onmessage = function (m) {
      const body = JSON.parse(m.data);
      if (body.session) { session = body.session; box.dataset.session = session; }
      if (body.error && state) state.textContent = body.error;
    };
  }

  function encoderFor(sampleRate, channels) {
    const e = new AudioEncoder({
      output: function (chunk) {
        if (!socket || socket.readyState !== 1 || !sending) return;
        const out = new Uint8Array(8 + chunk.byteLength);
        new DataView(out.buffer).setFloat64(0, (chunk.timestamp + offsetUs) / 1000);
        chunk.copyTo(out.subarray(8));
        socket.send(out.buffer);
      },
      error: function (e) { if (state) state.textContent = String(e); }
    });
    // The stations decode to mono whatever the microphone gives (Opus allows it).
    e.configure({codec: "opus", sampleRate: sampleRate, numberOfChannels: channels,
                 bitrate: 24000,
                 opus: {frameDuration: 20000, application: "voip"}});
    return e;
  }

  async function pump() {
    // The microphone's samples as AudioData, one chunk after the other.
    while (reader) {
      const got = await reader.read();
      if (got.done) return;
      const data = got.value;
      if (speaking) {
        if (!encoder) encoder = encoderFor(data.sampleRate, data.numberOfChannels);
        if (offsetUs === null) offsetUs = Date.now() * 1000 - data.timestamp - data.duration;
        encoder.encode(data);
      }
      data.close();
    }
  }

  async function press(ev) {
    ev.preventDefault();
    if (speaking || !socket || socket.readyState !== 1 || !mic) return;
    speaking = sending = true;
    offsetUs = null;
    button.classList.add("on");
    socket.send(JSON.stringify({start: target()}));
    say("speaking");
  }

  async function release() {
    if (!speaking) return;
    speaking = false;
    button.classList.remove("on");
    if (encoder) {
      await encoder.flush().catch(function () {});
    }
    sending = false;
    if (socket && socket.readyState === 1) socket.send(JSON.stringify({end: true}));
    say("ended");
  }

  async function start() {
    if (!button) return;
    if (typeof AudioEncoder === "undefined" || typeof MediaStreamTrackProcessor === "undefined") {
      say("unsupported");
      return;
    }
    try {
      mic = await navigator.mediaDevices.getUserMedia({audio: {
        channelCount: 1, echoCancellation: true, noiseSuppression: true}});
    } catch (e) {
      say("nomic");
      return;
    }
    const track = mic.getAudioTracks()[0];
    reader = new MediaStreamTrackProcessor({track: track}).readable.getReader();
    pump();
    connect();
    button.addEventListener("pointerdown", press);
    button.addEventListener("pointerup", release);
    button.addEventListener("pointerleave", release);
    button.addEventListener("keydown", function (e) { if (e.key === " " && !e.repeat) press(e); });
    button.addEventListener("keyup", function (e) { if (e.key === " ") release(); });
  }

  function refresh() {
    const id = box && box.dataset.session;
    const next = function () { setTimeout(refresh, 1000); };
    if (!id) { next(); return; }
    fetch("/voice/results?session=" + encodeURIComponent(id), {credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) { if (data) box.innerHTML = data.html; })
      .catch(function () {})
      .finally(next);
  }
  start();
  if (box) refresh();
})();
