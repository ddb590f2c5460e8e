// On-device sampling in the user's browser: an exported bundle's model.onnx run by ONNX Runtime Web (WebAssembly, or
// WebGPU where the browser offers it), with a DDIM loop written to match the Studio's own sampler
// (src/DiffusionPrune/Schedulers/DDIMScheduler.cs and NoiseSchedule.cs, which follow diffusers' DDIMScheduler).
// ONNX Runtime Web is served from wwwroot/lib, copied there from its npm package when the Studio is built.
import * as ort from '../lib/onnxruntime-web/ort.all.min.mjs';

ort.env.wasm.wasmPaths = new URL('../lib/onnxruntime-web/', import.meta.url).href;
// Threads need a cross-origin-isolated page (SharedArrayBuffer); the Studio's pages are not, so one thread.
ort.env.wasm.numThreads = 1;

const f32 = Math.fround;

/** Round half to even, as numpy's round. */
export function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 ? 2 * Math.round(x / 2) : r;
}

/** numpy.linspace(start, stop, num) as NoiseSchedule.NumpyLinspace: i * step + start, the last value exactly stop. */
export function numpyLinspace(start, stop, num) {
  if (num === 1) return [start];
  const step = (stop - start) / (num - 1), y = [];
  for (let i = 0; i < num; i++) y.push(step === 0 ? i / (num - 1) * (stop - start) + start : i * step + start);
  y[num - 1] = stop;
  return y;
}

/** numpy.arange(start, stop, step) as NoiseSchedule.NumpyArange: ceil((stop - start) / step) values of start + i * delta. */
export function numpyArange(start, stop, step) {
  const length = Math.ceil((stop - start) / step);
  if (!(length > 0)) return [];
  const y = [start];
  if (length === 1) return y;
  y.push(start + step);
  const delta = y[1] - y[0];
  for (let i = 2; i < length; i++) y.push(start + i * delta);
  return y;
}

/** The training betas (float32) of a diffusers scheduler config: linear, scaled_linear, squaredcos_cap_v2 or trained_betas. */
export function betas(config) {
  const n = config.num_train_timesteps ?? 1000;
  const start = config.beta_start ?? 0.0001, end = config.beta_end ?? 0.02;
  if (config.rescale_betas_zero_snr) throw new Error('rescale_betas_zero_snr is not supported on the device page');
  if (Array.isArray(config.trained_betas)) return Float32Array.from(config.trained_betas);
  const out = new Float32Array(n);
  const schedule = config.beta_schedule ?? 'linear';
  for (let i = 0; i < n; i++) {
    const f = n === 1 ? 0 : i / (n - 1);
    if (schedule === 'linear') out[i] = f32(start + (end - start) * f);
    else if (schedule === 'scaled_linear') { const s = f32(Math.sqrt(start) + (Math.sqrt(end) - Math.sqrt(start)) * f); out[i] = f32(s * s); }
    else if (schedule === 'squaredcos_cap_v2') {
      const bar = t => Math.cos((t + 0.008) / 1.008 * Math.PI / 2) ** 2;
      out[i] = f32(Math.min(1 - bar((i + 1) / n) / bar(i / n), 0.999));
    } else throw new Error(`beta_schedule '${schedule}' is not supported here`);
  }
  return out;
}

/** cumprod(1 - betas): float32 values, accumulated in double as ATen does. */
export function alphasCumprod(b) {
  const out = new Float32Array(b.length);
  let acc = 1;
  for (let i = 0; i < b.length; i++) { acc *= f32(1 - b[i]); out[i] = f32(acc); }
  return out;
}

/** DDIM's descending timesteps for n steps: leading (with steps_offset), trailing or linspace spacing (NoiseSchedule.SpacedTimesteps). */
export function timesteps(config, n) {
  const T = config.num_train_timesteps ?? 1000;
  if (!Number.isInteger(n) || n < 1 || n > T) throw new Error(`steps must be between 1 and ${T}, not ${n}`);
  const spacing = config.timestep_spacing ?? 'leading';
  let out;
  if (spacing === 'linspace') out = numpyLinspace(0, T - 1, n).map(roundHalfEven).reverse();
  else if (spacing === 'leading') {
    const ratio = Math.floor(T / n);
    out = [];
    for (let i = n - 1; i >= 0; i--) out.push(i * ratio + (config.steps_offset ?? 0));
  } else out = numpyArange(T, 0, -T / n).map(t => roundHalfEven(t) - 1);
  return out; // as numpy computes it, which for some trailing step counts ends in -1: ddim() refuses those, as our sampler does

}

/** A DDIM scheduler (eta 0) over a diffusers scheduler config, as the Studio's sampler runs it with --scheduler ddim. */
export function ddim(config) {
  const ac = alphasCumprod(betas(config));
  const T = config.num_train_timesteps ?? 1000;
  const final = (config.set_alpha_to_one ?? true) ? 1 : ac[0];
  const clip = config.clip_sample ?? true, range = config.clip_sample_range ?? 1;
  const prediction = config.prediction_type ?? 'epsilon';
  if (config.thresholding) throw new Error('thresholding is not supported on the device page');
  let n = 0;
  return {
    setTimesteps(steps) {
      const ts = timesteps(config, steps);
      if (ts.some(t => t < 0 || t >= T)) throw new Error(`${steps} steps with ${config.timestep_spacing} spacing give a timestep outside [0, ${T - 1}]; choose another step count`);
      n = steps;
      return ts;
    },
    /** x_{t-1} from the model output at t and x_t (all Float32Array of one shape). */
    step(output, t, x) {
      const prev = t - Math.floor(T / n);
      const aT = ac[t], aPrev = prev >= 0 ? ac[prev] : final;
      const sqrtA = f32(Math.sqrt(aT)), sqrtB = f32(Math.sqrt(f32(1 - aT)));
      const sqrtAPrev = f32(Math.sqrt(aPrev)), dir = f32(Math.sqrt(f32(1 - aPrev)));
      const out = new Float32Array(x.length);
      for (let i = 0; i < x.length; i++) {
        let x0, eps;
        if (prediction === 'epsilon') { x0 = f32(f32(x[i] - f32(output[i] * sqrtB)) / sqrtA); eps = output[i]; }
        else if (prediction === 'sample') { x0 = output[i]; eps = f32(f32(x[i] - f32(x0 * sqrtA)) / sqrtB); }
        else { x0 = f32(f32(x[i] * sqrtA) - f32(output[i] * sqrtB)); eps = f32(f32(output[i] * sqrtA) + f32(x[i] * sqrtB)); }
        if (clip) x0 = Math.min(range, Math.max(-range, x0));
        out[i] = f32(f32(x0 * sqrtAPrev) + f32(eps * dir));
      }
      return out;
    },
  };
}

/** Seeded standard normal noise (mulberry32 + Box-Muller): the browser's own, not torch's generator. */
export function gaussianNoise(count, seed) {
  let a = seed >>> 0;
  const uniform = () => {
    a = (a + 0x6D2B79F5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const out = new Float32Array(count);
  for (let i = 0; i < count; i += 2) {
    const u = Math.max(uniform(), 1e-12), v = uniform();
    const r = Math.sqrt(-2 * Math.log(u));
    out[i] = r * Math.cos(2 * Math.PI * v);
    if (i + 1 < count) out[i + 1] = r * Math.sin(2 * Math.PI * v);
  }
  return out;
}

/** Loads a bundle (model.onnx, onnx_model.json, scheduler_config.json) from its base URL into an ONNX Runtime session. */
export async function loadBundle(baseUrl, preferGpu = true) {
  const get = async file => {
    const response = await fetch(baseUrl + file);
    if (!response.ok) throw new Error(`${file}: HTTP ${response.status}`);
    return response;
  };
  // diffusers writes Infinity, -Infinity and NaN (e.g. lambda_min_clipped), which JSON.parse refuses: read them as null
  const json = async file => JSON.parse((await (await get(file)).text()).replace(/-?\bInfinity\b|\bNaN\b/g, 'null'));
  const info = await json('onnx_model.json');
  const scheduler = await json('scheduler_config.json');
  const model = new Uint8Array(await (await get(info.file ?? 'model.onnx')).arrayBuffer());
  const providers = preferGpu && navigator.gpu ? ['webgpu', 'wasm'] : ['wasm'];
  let session, provider;
  for (const p of providers) {
    try {
      session = await ort.InferenceSession.create(model, { executionProviders: [p] });
      provider = p;
      break;
    } catch (e) {
      if (p === providers[providers.length - 1]) throw e;
    }
  }
  return { session, provider, info, scheduler };
}

/**
 * Samples from given noise (a flat Float32Array of batch x C x H x W) with DDIM: classifier-free guidance in one batch
 * of 2B (conditional, then the null class) as the Studio's sampler does, learned-sigma outputs cut to their first C
 * channels. Returns the final sample and the milliseconds each step took.
 */
export async function sampleFromNoise(bundle, noise, { steps = 25, guidance = 1, labels = null, onStep = null } = {}) {
  const { session, info, scheduler } = bundle;
  const [H, W] = info.sample_size, C = info.in_channels, per = C * H * W, outC = info.out_channels;
  const batch = noise.length / per;
  const classes = info.num_classes;
  const guided = guidance !== 1 && classes != null && info.null_class != null;
  const labelsOf = labels ?? Array.from({ length: batch }, (_, i) => i % (classes ?? 1));
  const ddimScheduler = ddim(scheduler);
  const ts = ddimScheduler.setTimesteps(steps);
  const inputName = info.inputs[0].name, outputName = info.outputs[0].name;
  let x = Float32Array.from(noise);
  const times = [];
  for (let s = 0; s < ts.length; s++) {
    const started = performance.now();
    const rows = guided ? 2 * batch : batch;
    const sampleData = new Float32Array(rows * per);
    sampleData.set(x, 0);
    if (guided) sampleData.set(x, batch * per);
    const feeds = {
      [inputName]: new ort.Tensor('float32', sampleData, [rows, C, H, W]),
      timestep: new ort.Tensor('int64', new BigInt64Array(rows).fill(BigInt(ts[s])), [rows]),
    };
    if (classes != null) {
      const l = new BigInt64Array(rows);
      for (let i = 0; i < batch; i++) l[i] = BigInt(labelsOf[i]);
      if (guided) for (let i = 0; i < batch; i++) l[batch + i] = BigInt(info.null_class);
      feeds.class_labels = new ort.Tensor('int64', l, [rows]);
    }
    const result = (await session.run(feeds))[outputName].data;
    const eps = new Float32Array(batch * per);
    for (let b = 0; b < batch; b++) {
      for (let i = 0; i < per; i++) {
        const cond = result[b * outC * H * W + i];
        eps[b * per + i] = guided ? f32(result[(batch + b) * outC * H * W + i] + f32(f32(cond - result[(batch + b) * outC * H * W + i]) * guidance)) : cond;
      }
    }
    x = ddimScheduler.step(eps, ts[s], x);
    times.push(performance.now() - started);
    if (onStep) await onStep(s + 1, ts.length, times[times.length - 1]);
  }
  return { sample: x, times };
}

/** Draws a batch in [-1, 1] as a grid of grey or RGB tiles, each scaled up, on a canvas. */
export function drawGrid(canvas, sample, info, scale = 3) {
  const [H, W] = info.sample_size, C = info.in_channels, per = C * H * W;
  const batch = sample.length / per, cols = Math.ceil(Math.sqrt(batch)), rows = Math.ceil(batch / cols), pad = 2;
  canvas.width = cols * (W * scale + pad) + pad;
  canvas.height = rows * (H * scale + pad) + pad;
  const ctx = canvas.getContext('2d');
  ctx.fillStyle = '#808080';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const image = ctx.createImageData(W, H);
  const tile = document.createElement('canvas');
  tile.width = W; tile.height = H;
  for (let b = 0; b < batch; b++) {
    for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) {
      const o = (y * W + x) * 4;
      for (let c = 0; c < 3; c++) {
        const v = sample[b * per + (C === 1 ? 0 : c) * H * W + y * W + x];
        image.data[o + c] = Math.round(Math.min(1, Math.max(-1, v)) * 127.5 + 127.5);
      }
      image.data[o + 3] = 255;
    }
    tile.getContext('2d').putImageData(image, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(tile, pad + (b % cols) * (W * scale + pad), pad + Math.floor(b / cols) * (H * scale + pad), W * scale, H * scale);
  }
}

/** Wires the page: loads the bundle, then runs the sampler on the button and shows the grid and time per step. */
export async function mount(root, baseUrl) {
  const $ = selector => root.querySelector(selector);
  const status = $('.ondevice-status');
  try {
    status.textContent = 'Loading the bundle into ONNX Runtime Web...';
    const bundle = await loadBundle(baseUrl);
    window.dprune = { bundle, sampleFromNoise: (noise, options) => sampleFromNoise(bundle, Float32Array.from(noise), options) };
    const info = bundle.info;
    if (info.num_classes == null) $('.ondevice-guidance').closest('label').style.display = 'none';
    status.textContent = `Ready: ${info.class_name}, ${info.parameters.toLocaleString('en')} parameters, on ${bundle.provider === 'webgpu' ? 'WebGPU' : 'WebAssembly'}.`;
    root.dataset.ready = 'true';
    $('.ondevice-run').disabled = false;
    $('.ondevice-run').addEventListener('click', async () => {
      const steps = Math.max(1, Math.min(1000, parseInt($('.ondevice-steps').value, 10) || 25));
      const count = Math.max(1, Math.min(64, parseInt($('.ondevice-count').value, 10) || 16));
      const seed = parseInt($('.ondevice-seed').value, 10) || 0;
      const guidance = parseFloat($('.ondevice-guidance').value) || 1;
      const [H, W] = info.sample_size;
      $('.ondevice-run').disabled = true;
      try {
        const noise = gaussianNoise(count * info.in_channels * H * W, seed);
        const { sample, times } = await sampleFromNoise(bundle, noise, {
          steps, guidance,
          onStep: async (done, total, ms) => { status.textContent = `Step ${done}/${total}: ${ms.toFixed(1)} ms`; await new Promise(r => setTimeout(r, 0)); },
        });
        drawGrid($('.ondevice-canvas'), sample, info);
        const sorted = [...times].sort((a, b) => a - b);
        const median = sorted[Math.floor(sorted.length / 2)];
        status.textContent = `${count} images in ${steps} steps on ${bundle.provider === 'webgpu' ? 'WebGPU' : 'WebAssembly'} in this browser: ` +
          `${median.toFixed(1)} ms per step (median), ${(times.reduce((a, b) => a + b, 0) / 1000).toFixed(2)} s in all.`;
        root.dataset.sampled = 'true';
      } catch (e) {
        status.textContent = `Sampling failed: ${e.message}`;
      } finally {
        $('.ondevice-run').disabled = false;
      }
    });
  } catch (e) {
    status.textContent = `The bundle could not be loaded: ${e.message}`;
    root.dataset.failed = 'true';
  }
}
