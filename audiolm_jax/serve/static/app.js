// The duplex page: microphone -> 24 kHz Opus (WebCodecs) -> Ogg pages -> /api/chat, and the
// server's Ogg pages -> Opus packets -> WebCodecs decoder -> jitter buffer -> speakers.
// Protocol: binary messages, first byte the kind (audiolm_jax/serve/protocol.py).

import { OggOpusReader, OggOpusWriter, opusPacketSamples48k } from './ogg.js';

const KIND = { HANDSHAKE: 0x00, AUDIO: 0x01, TEXT: 0x02, METADATA: 0x04, ERROR: 0x05 };
const RATE = 24000;            // the wire's rate, both directions
const FRAME = 1920;            // 80 ms at 24 kHz: one model step, the unit of the latency measure
const PAGE_48K = 2 * FRAME;    // send a page once 80 ms of packets (in 48 kHz granule units) are ready
const RTT_WINDOW = 50;         // frames in the shown median
const PLAYER = { startMs: 100, maxMs: 400, targetMs: 200 };

const $ = (id) => document.getElementById(id);

// Everything a test or a person may want to read, mirrored into #stats (data-* and text).
const stats = {
  micBlocks: 0, encodedPackets: 0, sentPages: 0, sentBytes: 0, sentFrames: 0,
  recvPages: 0, recvBytes: 0, recvPackets: 0, decodedSamples: 0,
  playedSamples: 0, underruns: 0, drops: 0, droppedSamples: 0, queuedMs: 0,
  textPieces: 0, rttMs: null, jsErrors: 0,
};

function setStatus(s) { $('status').textContent = s; $('status').dataset.state = s; }
function showError(msg) { $('error').textContent = msg; $('error').hidden = false; }
function showNotice(msg) { $('notice').textContent = msg; $('notice').hidden = !msg; }

function render() {
  const el = $('stats');
  for (const [k, v] of Object.entries(stats)) {
    el.dataset[k] = v === null ? '' : String(v);
    const cell = el.querySelector(`[data-key="${k}"]`);
    if (cell) cell.textContent = v === null ? '–' : String(v);
  }
  $('rtt').textContent = stats.rttMs === null ? '–' : `${stats.rttMs} ms`;
  $('rtt').dataset.ms = stats.rttMs === null ? '' : String(stats.rttMs);
}

// What this browser lacks for the page, in one line ('' when nothing).
function missingFeatures() {
  if (!window.isSecureContext) {
    return 'This page needs a secure context for the microphone and WebCodecs: open it over https (serve --ssl_cert/--ssl_key) or on http://localhost.';
  }
  const lack = [];
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) lack.push('getUserMedia');
  if (typeof AudioEncoder === 'undefined' || typeof AudioDecoder === 'undefined') lack.push('WebCodecs audio (AudioEncoder/AudioDecoder)');
  if (typeof AudioWorkletNode === 'undefined') lack.push('AudioWorklet');
  return lack.length ? `This browser lacks ${lack.join(', ')}: use a recent Chromium or Firefox.` : '';
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

// Streaming linear resampler (identity when the rates match). The page asks for a 24 kHz
// AudioContext so the browser's own resampler normally does the work; this covers browsers
// that refuse a microphone or a decoder output at another rate than the context's.
class Resampler {
  constructor(from, to) { this.step = from / to; this.pos = 1; this.last = 0; this.same = from === to; }
  process(x) {
    if (this.same || !x.length) return x;
    // Index 0 is the previous call's last sample, index k the input's sample k - 1.
    const out = new Float32Array(Math.max(0, Math.ceil((x.length + 1 - this.pos) / this.step)));
    let t = this.pos, n = 0;
    while (t < x.length && n < out.length) {
      const i = Math.floor(t), f = t - i;
      const a = i === 0 ? this.last : x[i - 1];
      out[n++] = a + (x[i] - a) * f;
      t += this.step;
    }
    this.pos = t - x.length;
    this.last = x[x.length - 1];
    return out.subarray(0, n);
  }
}

function audioDataToMono(data) {
  const out = new Float32Array(data.numberOfFrames);
  try {
    data.copyTo(out, { planeIndex: 0, format: 'f32-planar' });
  } catch (e) { // a browser that cannot convert: its native format is f32 already
    data.copyTo(out, { planeIndex: 0 });
  }
  return out;
}

// One conversation: microphone, codecs, socket, player. stop() undoes all of it.
class Conversation {
  constructor(onEnd) {
    this.onEnd = onEnd;
    this.ended = false;
    this.ready = false;         // handshake received: audio may flow
    this.delayFrames = 1;
    this.sentAt = [];           // send time of each 80 ms user frame
    this.sent24k = 0;           // user samples sent, 24 kHz
    this.frameDone = [];        // time each reply frame was fully decoded
    this.decoded24k = 0;
    this.rtts = [];
    this.encTime = 0;           // encoder input timestamps, in samples
    this.decTime = 0;           // decoder input timestamps, in 48 kHz samples
    this.pagePackets = [];
    this.page48k = 0;
    this.writer = null;
    this.reader = new OggOpusReader();
  }

  async start() {
    setStatus('starting');
    // Made before any await, while the click still counts as a user gesture (autoplay rules).
    // At 24 kHz the browser resamples the microphone and the speaker side for us.
    this.ctx = new AudioContext({ sampleRate: RATE, latencyHint: 'interactive' });
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
    });
    if (this.ended) return this.stop();
    let source;
    try {
      source = this.ctx.createMediaStreamSource(this.stream);
    } catch (e) { // Firefox: a microphone at another rate needs a context at the default rate
      this.ctx.close();
      this.ctx = new AudioContext({ latencyHint: 'interactive' });
      source = this.ctx.createMediaStreamSource(this.stream);
    }
    const ctx = this.ctx;
    await ctx.audioWorklet.addModule(new URL('./worklet.js', import.meta.url));
    if (this.ended) return this.stop();
    const ms = (x) => Math.round((x * ctx.sampleRate) / 1000);
    this.player = new AudioWorkletNode(ctx, 'player', {
      numberOfInputs: 0, outputChannelCount: [1],
      processorOptions: { startSamples: ms(PLAYER.startMs), maxSamples: ms(PLAYER.maxMs), targetSamples: ms(PLAYER.targetMs) },
    });
    this.player.port.onmessage = (e) => this.onPlayerStats(e.data);
    this.player.connect(ctx.destination);
    this.capture = new AudioWorkletNode(ctx, 'capture', { numberOfOutputs: 1, outputChannelCount: [1] });
    this.capture.port.onmessage = (e) => this.onMic(e.data);
    // The capture node is pulled through a muted gain (a node must reach the destination to run).
    this.mute = ctx.createGain();
    this.mute.gain.value = 0;
    source.connect(this.capture).connect(this.mute).connect(ctx.destination);
    this.micResampler = new Resampler(ctx.sampleRate, RATE);
    this.playResamplers = new Map();
    // Not awaited: a context the browser keeps suspended (autoplay rules, or no audio device:
    // then no microphone audio flows either) must not hang the start; say it instead.
    if (ctx.state === 'suspended') ctx.resume().catch(() => {});
    this.suspendTimer = setTimeout(() => {
      if (!this.ended && ctx.state !== 'running') {
        showNotice('Audio is not running (no audio device, or the browser blocks it): click the page to retry.');
        document.addEventListener('click', () => ctx.resume().catch(() => {}), { once: true });
        ctx.onstatechange = () => { if (ctx.state === 'running') showNotice(''); };
      }
    }, 1500);
    this.makeCodecs();
    this.connect();
  }

  makeCodecs() {
    this.encoder = new AudioEncoder({
      output: (chunk, meta) => this.onPacket(chunk, meta),
      error: (e) => this.fail(`Opus encoder: ${e.message || e}`),
    });
    this.encoder.configure({ codec: 'opus', sampleRate: RATE, numberOfChannels: 1, bitrate: 32000 });
    this.decoder = new AudioDecoder({
      output: (data) => this.onDecoded(data),
      error: (e) => this.fail(`Opus decoder: ${e.message || e}`),
    });
  }

  // Configured on the first reply packet, with the stream's OpusHead when it came first
  // (optional in the spec, but it carries the pre-skip and not every browser guesses it).
  configureDecoder() {
    const config = { codec: 'opus', sampleRate: RATE, numberOfChannels: 1 };
    if (this.reader.head) config.description = this.reader.head;
    this.decoder.configure(config);
  }

  connect() {
    // Same host, ws: or wss: as the page; the page's query (?token=, sampling) goes along.
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const url = `${scheme}//${location.host}/api/chat${location.search}`;
    setStatus('connecting');
    this.ws = new WebSocket(url);
    this.ws.binaryType = 'arraybuffer';
    this.ws.onmessage = (e) => this.onMessage(e.data);
    this.ws.onclose = (e) => {
      if (this.ended) return;
      if (!this.ready && !$('error').textContent) showError(`The server closed the connection (code ${e.code}) before the handshake.`);
      this.stop(this.ready ? 'closed' : 'error');
    };
    this.ws.onerror = () => {}; // onclose follows and says it
  }

  onMessage(data) {
    if (this.ended || !(data instanceof ArrayBuffer) || data.byteLength === 0) return;
    const bytes = new Uint8Array(data);
    const kind = bytes[0], payload = bytes.subarray(1);
    if (kind === KIND.HANDSHAKE) {
      this.ready = true;
      setStatus('connected');
    } else if (kind === KIND.METADATA) {
      const meta = JSON.parse(new TextDecoder().decode(payload));
      this.delayFrames = Number.isInteger(meta.delay_frames) ? meta.delay_frames : 1;
      $('meta').textContent = `session ${meta.session} · reply delay ${this.delayFrames} frame${this.delayFrames === 1 ? '' : 's'} · ${meta.frame_rate} Hz frames`;
    } else if (kind === KIND.AUDIO) {
      stats.recvBytes += payload.length;
      let packets;
      try {
        packets = this.reader.push(payload.slice());
      } catch (e) {
        return this.fail(String(e.message || e));
      }
      stats.recvPages = this.reader.pages;
      if (packets.length && this.decoder.state === 'unconfigured') this.configureDecoder();
      for (const p of packets) {
        stats.recvPackets++;
        this.decoder.decode(new EncodedAudioChunk({ type: 'key', timestamp: Math.round((this.decTime * 1e6) / 48000), data: p }));
        this.decTime += opusPacketSamples48k(p);
      }
    } else if (kind === KIND.TEXT) {
      const piece = new TextDecoder().decode(payload);
      stats.textPieces++;
      $('text').textContent += piece;
      $('text').scrollTop = $('text').scrollHeight;
    } else if (kind === KIND.ERROR) {
      showError(`Server: ${new TextDecoder().decode(payload)}`);
      this.stop('error');
    }
  }

  // Microphone block (context rate) -> 24 kHz -> encoder; nothing flows before the handshake.
  onMic(block) {
    if (!this.ready || this.ended || this.encoder.state !== 'configured') return;
    stats.micBlocks++;
    const pcm = this.micResampler.process(block);
    if (!pcm.length) return;
    const data = new AudioData({
      format: 'f32-planar', sampleRate: RATE, numberOfChannels: 1, numberOfFrames: pcm.length,
      timestamp: Math.round((this.encTime * 1e6) / RATE), data: pcm,
    });
    this.encTime += pcm.length;
    this.encoder.encode(data);
    data.close();
  }

  onPacket(chunk, meta) {
    if (this.ended) return;
    stats.encodedPackets++;
    const packet = new Uint8Array(chunk.byteLength);
    chunk.copyTo(packet);
    if (!this.writer) {
      // The encoder's own OpusHead (when it gives one) knows its pre-skip.
      const desc = meta && meta.decoderConfig && meta.decoderConfig.description;
      let preSkip = 312;
      if (desc && desc.byteLength >= 12) {
        const buf = desc instanceof ArrayBuffer ? desc : desc.buffer.slice(desc.byteOffset, desc.byteOffset + desc.byteLength);
        preSkip = new DataView(buf).getUint16(10, true);
      }
      this.writer = new OggOpusWriter({ inputRate: RATE, preSkip });
      this.pendingHeaders = this.writer.headers();
    }
    this.pagePackets.push(packet);
    this.page48k += opusPacketSamples48k(packet);
    if (this.page48k >= PAGE_48K) this.sendPage();
  }

  sendPage() {
    let page = this.writer.page(this.pagePackets);
    if (this.pendingHeaders) { // the stream starts with OpusHead and OpusTags, as sphn writes it
      const all = new Uint8Array(this.pendingHeaders.length + page.length);
      all.set(this.pendingHeaders, 0);
      all.set(page, this.pendingHeaders.length);
      page = all;
      this.pendingHeaders = null;
      stats.sentPages += 2;
    }
    const msg = new Uint8Array(page.length + 1);
    msg[0] = KIND.AUDIO;
    msg.set(page, 1);
    if (this.ws.readyState !== WebSocket.OPEN) return;
    this.ws.send(msg);
    const now = performance.now();
    stats.sentPages++;
    stats.sentBytes += page.length;
    this.sent24k += this.page48k / 2;
    while ((this.sentAt.length + 1) * FRAME <= this.sent24k) this.sentAt.push(now);
    stats.sentFrames = this.sentAt.length;
    this.pagePackets = [];
    this.page48k = 0;
  }

  onDecoded(data) {
    if (this.ended) { data.close(); return; }
    const rate = data.sampleRate;
    const pcm = audioDataToMono(data);
    data.close();
    // Latency as client.py measures it: user frame j is stepped as step j, whose reply is
    // frame j - delay; the time from sending j to having decoded the end of that frame.
    const now = performance.now();
    this.decoded24k += (pcm.length * RATE) / rate;
    stats.decodedSamples = Math.round(this.decoded24k);
    while ((this.frameDone.length + 1) * FRAME <= this.decoded24k) {
      const k = this.frameDone.length;
      this.frameDone.push(now);
      const j = k + this.delayFrames;
      if (j < this.sentAt.length) {
        this.rtts.push(now - this.sentAt[j]);
        if (this.rtts.length > RTT_WINDOW) this.rtts.shift();
        stats.rttMs = Math.round(median(this.rtts));
      }
    }
    if (!this.playResamplers.has(rate)) this.playResamplers.set(rate, new Resampler(rate, this.ctx.sampleRate));
    const out = this.playResamplers.get(rate).process(pcm);
    if (out.length) this.player.port.postMessage(out, [out.buffer]);
  }

  onPlayerStats(s) {
    const to24k = (n) => Math.round((n * RATE) / this.ctx.sampleRate);
    stats.playedSamples = to24k(s.played);
    stats.underruns = s.underruns;
    stats.drops = s.drops;
    stats.droppedSamples = to24k(s.dropped);
    stats.queuedMs = Math.round((1000 * s.queued) / this.ctx.sampleRate);
  }

  fail(msg) {
    showError(msg);
    this.stop('error');
  }

  stop(state = 'stopped') {
    if (this.ended) return;
    this.ended = true;
    this.ready = false;
    clearTimeout(this.suspendTimer);
    showNotice('');
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000);
    if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
    for (const c of [this.encoder, this.decoder]) if (c && c.state !== 'closed') c.close();
    if (this.ctx && this.ctx.state !== 'closed') this.ctx.close();
    setStatus(state);
    this.onEnd();
  }
}

let current = null;

function setButton(running) {
  $('toggle').textContent = running ? 'Stop' : 'Start';
  $('toggle').dataset.running = running ? '1' : '0';
}

async function toggle() {
  if (current) { current.stop(); return; }
  $('error').hidden = true;
  $('error').textContent = '';
  $('text').textContent = '';
  $('meta').textContent = '';
  for (const k of Object.keys(stats)) stats[k] = k === 'rttMs' ? null : 0;
  const conv = new Conversation(() => { if (current === conv) { current = null; setButton(false); } });
  current = conv;
  setButton(true);
  try {
    await conv.start();
  } catch (e) {
    const msg = e && e.name === 'NotAllowedError' ? 'Microphone permission was refused.' : `Could not start: ${e.message || e}`;
    conv.fail(msg);
  }
}

window.addEventListener('error', (e) => { stats.jsErrors++; showError(`Page error: ${e.message}`); });
window.addEventListener('unhandledrejection', (e) => { stats.jsErrors++; showError(`Page error: ${e.reason}`); });

const missing = missingFeatures();
if (missing) {
  $('notice').textContent = missing;
  $('notice').hidden = false;
  $('toggle').disabled = true;
  setStatus('unsupported');
} else {
  $('toggle').addEventListener('click', toggle);
  setStatus('idle');
}
setInterval(render, 200);
render();
