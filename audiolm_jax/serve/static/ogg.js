// Ogg framing for Opus (RFC 3533 pages, RFC 7845 Ogg Opus): WebCodecs gives and takes bare
// Opus packets, the wire carries Ogg pages, so we write and parse the pages ourselves.

const CRC_TABLE = (() => {
  // Ogg's CRC-32: polynomial 0x04c11db7, not reflected, initial value 0, no final xor.
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let r = i << 24;
    for (let k = 0; k < 8; k++) r = r & 0x80000000 ? (r << 1) ^ 0x04c11db7 : r << 1;
    t[i] = r >>> 0;
  }
  return t;
})();

export function oggCrc(bytes) {
  let crc = 0;
  for (let i = 0; i < bytes.length; i++) crc = ((crc << 8) ^ CRC_TABLE[((crc >>> 24) ^ bytes[i]) & 0xff]) >>> 0;
  return crc;
}

// Samples (at 48 kHz, Ogg Opus's granule unit whatever the input rate) in one Opus packet,
// from its TOC byte (RFC 6716 section 3.1).
export function opusPacketSamples48k(packet) {
  if (!packet.length) return 0;
  const toc = packet[0], config = toc >> 3;
  let size; // in 48 kHz samples
  if (config < 12) size = [480, 960, 1920, 2880][config & 3];        // SILK: 10/20/40/60 ms
  else if (config < 16) size = [480, 960][config & 1];                // hybrid: 10/20 ms
  else size = [120, 240, 480, 960][config & 3];                       // CELT: 2.5/5/10/20 ms
  const code = toc & 3;
  const frames = code === 0 ? 1 : code < 3 ? 2 : packet.length > 1 ? packet[1] & 0x3f : 0;
  return size * frames;
}

function u32le(view, at, v) { view.setUint32(at, v >>> 0, true); }

// One page: header + segment table (lacing) + the packets' bytes, CRC filled in.
function buildPage(packets, { granule, serial, sequence, bos = false, eos = false }) {
  const lacing = [];
  for (const p of packets) {
    let n = p.length;
    while (n >= 255) { lacing.push(255); n -= 255; }
    lacing.push(n); // a value under 255 ends the packet (0 when its length is a multiple of 255)
  }
  if (lacing.length > 255) throw new Error('Ogg page over 255 segments');
  const bodyLen = packets.reduce((s, p) => s + p.length, 0);
  const page = new Uint8Array(27 + lacing.length + bodyLen);
  const view = new DataView(page.buffer);
  page.set([0x4f, 0x67, 0x67, 0x53], 0); // "OggS"
  page[4] = 0; // version
  page[5] = (bos ? 0x02 : 0) | (eos ? 0x04 : 0);
  view.setBigUint64(6, BigInt(granule), true);
  u32le(view, 14, serial);
  u32le(view, 18, sequence);
  u32le(view, 22, 0); // CRC, computed over the page with this field zero
  page[26] = lacing.length;
  page.set(lacing, 27);
  let at = 27 + lacing.length;
  for (const p of packets) { page.set(p, at); at += p.length; }
  u32le(view, 22, oggCrc(page));
  return page;
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

// A mono Ogg Opus stream: header pages once, then one page per group of packets.
export class OggOpusWriter {
  constructor({ inputRate = 24000, preSkip = 312, vendor = 'audiolm_jax web' } = {}) {
    this.serial = (Math.random() * 0x100000000) >>> 0;
    this.sequence = 0;
    this.granule = 0; // 48 kHz samples written so far
    this.inputRate = inputRate;
    this.preSkip = preSkip;
    this.vendor = vendor;
  }

  headers() {
    const head = new Uint8Array(19);
    const hv = new DataView(head.buffer);
    head.set(new TextEncoder().encode('OpusHead'), 0);
    head[8] = 1; // version
    head[9] = 1; // channels
    hv.setUint16(10, this.preSkip, true);
    hv.setUint32(12, this.inputRate, true);
    hv.setInt16(16, 0, true); // output gain
    head[18] = 0; // channel mapping family 0: mono/stereo, no table
    const vendor = new TextEncoder().encode(this.vendor);
    const tags = new Uint8Array(8 + 4 + vendor.length + 4);
    const tv = new DataView(tags.buffer);
    tags.set(new TextEncoder().encode('OpusTags'), 0);
    tv.setUint32(8, vendor.length, true);
    tags.set(vendor, 12);
    tv.setUint32(12 + vendor.length, 0, true); // no user comments
    // RFC 7845: OpusHead alone on the first (BOS) page, OpusTags on the next, granule 0.
    return concat([
      buildPage([head], { granule: 0, serial: this.serial, sequence: this.sequence++, bos: true }),
      buildPage([tags], { granule: 0, serial: this.serial, sequence: this.sequence++ }),
    ]);
  }

  // packets: [Uint8Array]; -> one page whose granule is the end of its last packet.
  page(packets, eos = false) {
    for (const p of packets) this.granule += opusPacketSamples48k(p);
    return buildPage(packets, { granule: this.granule, serial: this.serial, sequence: this.sequence++, eos });
  }
}

// Incremental reader: bytes in (pages may be split or batched), Opus packets out.
export class OggOpusReader {
  constructor() {
    this.buf = new Uint8Array(0);
    this.partial = []; // segments of a packet continued on the next page
    this.pages = 0;
    this.badPages = 0;
    this.head = null; // the OpusHead packet
  }

  push(bytes) {
    this.buf = this.buf.length ? concat([this.buf, bytes]) : bytes;
    const packets = [];
    let at = 0;
    while (this.buf.length - at >= 27) {
      const b = this.buf;
      if (b[at] !== 0x4f || b[at + 1] !== 0x67 || b[at + 2] !== 0x67 || b[at + 3] !== 0x53) {
        throw new Error('reply audio is not Ogg: no OggS capture pattern');
      }
      const nseg = b[at + 26];
      if (this.buf.length - at < 27 + nseg) break;
      let bodyLen = 0;
      for (let i = 0; i < nseg; i++) bodyLen += b[at + 27 + i];
      const total = 27 + nseg + bodyLen;
      if (this.buf.length - at < total) break;
      const page = b.slice(at, at + total);
      at += total;
      const stored = new DataView(page.buffer).getUint32(22, true);
      page.fill(0, 22, 26);
      if (oggCrc(page) !== stored) { this.badPages++; this.partial = []; continue; }
      this.pages++;
      if (!(page[5] & 0x01)) this.partial = []; // not a continuation: drop any torn packet
      let off = 27 + nseg;
      for (let i = 0; i < nseg; i++) {
        const n = page[27 + i];
        this.partial.push(page.subarray(off, off + n));
        off += n;
        if (n < 255) { this.emit(concat(this.partial), packets); this.partial = []; }
      }
    }
    this.buf = this.buf.slice(at);
    return packets;
  }

  emit(packet, packets) {
    const magic = packet.length >= 8 ? String.fromCharCode(...packet.subarray(0, 8)) : '';
    if (magic === 'OpusHead') this.head = packet;
    else if (magic !== 'OpusTags') packets.push(packet);
  }
}
