// Audio-thread halves of the page: the microphone tap and the playback jitter buffer.

// Posts the microphone's first channel to the page in ~20 ms blocks (fewer messages than
// one per 128-sample render quantum).
class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.size = Math.round(sampleRate / 50);
    this.block = new Float32Array(this.size);
    this.fill = 0;
  }

  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (ch) {
      let i = 0;
      while (i < ch.length) {
        const n = Math.min(ch.length - i, this.size - this.fill);
        this.block.set(ch.subarray(i, i + n), this.fill);
        this.fill += n;
        i += n;
        if (this.fill === this.size) {
          this.port.postMessage(this.block, [this.block.buffer]); // (detaches this.block)
          this.block = new Float32Array(this.size);
          this.fill = 0;
        }
      }
    }
    return true;
  }
}

// Jitter buffer: waits for `startSamples` before playing (and again after running dry), and
// when more than `maxSamples` is queued drops the oldest audio down to `targetSamples`, so
// that a burst of late packets costs a skip instead of a lasting delay.
class PlayerProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = options.processorOptions;
    this.startSamples = o.startSamples;
    this.maxSamples = o.maxSamples;
    this.targetSamples = o.targetSamples;
    this.queue = [];
    this.head = 0; // read offset into queue[0]
    this.queued = 0;
    this.playing = false;
    this.played = 0;
    this.underruns = 0;
    this.drops = 0;
    this.dropped = 0;
    this.sinceReport = 0;
    this.port.onmessage = (e) => this.push(e.data);
  }

  push(samples) {
    this.queue.push(samples);
    this.queued += samples.length;
    if (this.queued > this.maxSamples) this.drop(this.queued - this.targetSamples);
    if (!this.playing && this.queued >= this.startSamples) this.playing = true;
  }

  drop(n) {
    this.drops++;
    this.dropped += n;
    this.queued -= n;
    while (n > 0) {
      const avail = this.queue[0].length - this.head;
      if (avail <= n) { n -= avail; this.queue.shift(); this.head = 0; } else { this.head += n; n = 0; }
    }
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    let i = 0;
    if (this.playing) {
      while (i < out.length && this.queued > 0) {
        const cur = this.queue[0];
        const n = Math.min(out.length - i, cur.length - this.head);
        out.set(cur.subarray(this.head, this.head + n), i);
        i += n;
        this.head += n;
        this.queued -= n;
        if (this.head === cur.length) { this.queue.shift(); this.head = 0; }
      }
      if (i < out.length) { this.underruns++; this.playing = false; } // ran dry: rebuffer
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    this.played += i;
    this.sinceReport += out.length;
    if (this.sinceReport >= sampleRate / 10) {
      this.sinceReport = 0;
      this.port.postMessage({ played: this.played, underruns: this.underruns, drops: this.drops,
                              dropped: this.dropped, queued: this.queued, playing: this.playing });
    }
    return true;
  }
}

registerProcessor('capture', CaptureProcessor);
registerProcessor('player', PlayerProcessor);
