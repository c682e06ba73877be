// Recording in the browser, and 16-bit PCM WAV encoding: MediaRecorder records in whatever the
// browser likes (WebM/Opus, MP4/AAC), which the server does not decode, so the clip is decoded
// here (AudioContext), mixed to mono and resampled (OfflineAudioContext), then written as WAV.
export const WAV_RATE = 16000;

// Mono float samples in [-1, 1] -> a WAV Blob (RIFF, PCM, 16-bit little-endian).
export function encodeWav(samples, sampleRate) {
  const bytes = new ArrayBuffer(44 + samples.length * 2);
  const view = new DataView(bytes);
  const text = (offset, s) => { for (let i = 0; i < s.length; i++) view.setUint8(offset + i, s.charCodeAt(i)); };
  text(0, "RIFF");
  view.setUint32(4, 36 + samples.length * 2, true);
  text(8, "WAVE");
  text(12, "fmt ");
  view.setUint32(16, 16, true);          // size of the fmt chunk
  view.setUint16(20, 1, true);           // PCM
  view.setUint16(22, 1, true);           // mono
  view.setUint32(24, sampleRate, true);
  view.setUint32(28, sampleRate * 2, true); // bytes per second
  view.setUint16(32, 2, true);           // bytes per frame
  view.setUint16(34, 16, true);          // bits per sample
  text(36, "data");
  view.setUint32(40, samples.length * 2, true);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i] || 0));
    view.setInt16(44 + i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  }
  return new Blob([bytes], { type: "audio/wav" });
}

// Any clip the browser can decode -> a mono WAV Blob at `rate` Hz.
export async function toWav(blob, rate = WAV_RATE) {
  const context = new AudioContext();
  let decoded;
  try {
    decoded = await context.decodeAudioData(await blob.arrayBuffer());
  } finally {
    context.close();
  }
  const frames = Math.max(1, Math.ceil(decoded.duration * rate));
  const offline = new OfflineAudioContext(1, frames, rate); // one output channel: the mix to mono
  const source = offline.createBufferSource();
  source.buffer = decoded;
  source.connect(offline.destination);
  source.start();
  const rendered = await offline.startRendering();
  return encodeWav(rendered.getChannelData(0), rate);
}

// The microphone: start(), then stop() -> a WAV Blob. Stops by itself after maxSeconds.
export class Recorder {
  static available() {
    return Boolean(window.isSecureContext && navigator.mediaDevices && window.MediaRecorder && window.AudioContext);
  }

  async start(maxSeconds, onAutoStop) {
    this.stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    this.chunks = [];
    this.recorder = new MediaRecorder(this.stream);
    this.recorder.ondataavailable = (e) => { if (e.data.size) this.chunks.push(e.data); };
    this.done = new Promise((resolve) => { this.recorder.onstop = resolve; });
    this.recorder.start();
    this.timer = setTimeout(() => onAutoStop && onAutoStop(), Math.max(0.5, maxSeconds - 0.2) * 1000);
  }

  async stop() {
    clearTimeout(this.timer);
    if (this.recorder.state !== "inactive") this.recorder.stop();
    await this.done;
    this.stream.getTracks().forEach((t) => t.stop());
    const clip = new Blob(this.chunks, { type: this.recorder.mimeType });
    if (!clip.size) throw new Error("nothing was recorded");
    return toWav(clip);
  }
}
