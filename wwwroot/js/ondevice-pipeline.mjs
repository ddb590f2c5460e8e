// On-device Stable Diffusion in the user's browser: an exported ONNX pipeline bundle (text_encoder, unet and vae_decoder
// model.onnx, the layout of diffusers' OnnxStableDiffusionPipeline) run by ONNX Runtime Web, prompt to image. The prompt
// is tokenized by the Studio (POST api/exports/NAME/tokenize, with the bundle's own CLIP tokenizer files); everything
// after that runs here. The loop is a line-for-line port of the array runner the C# on-device demo uses
// (src/DiffusionPrune/Inference/Onnx/OnnxStableDiffusionSession.cs, ArrayDiffusionSampler.SampleText and
// ArrayDDIMScheduler.cs): the same float32 operations in the same order, so the same ids and noise give its image up to
// the two ONNX runtimes' own float error. Its twin for single-model bundles is ondevice.mjs.
// ONNX Runtime Web is served from wwwroot/lib, copied there from its npm package when the Studio is built.
import * as ort from '../lib/onnxruntime-web/ort.all.min.mjs';
// numpy's linspace and arange in float64 and round-half-to-even, shared with the single-model page (NoiseSchedule's).
import { gaussianNoise, numpyArange, numpyLinspace, roundHalfEven } from './ondevice.mjs';

ort.env.wasm.wasmPaths = new URL('../lib/onnxruntime-web/', import.meta.url).href;
// Threads need a cross-origin-isolated page (SharedArrayBuffer); the Studio's pages are not, so one thread.
ort.env.wasm.numThreads = 1;

const f32 = Math.fround;

// ---- DDIM on float32 arrays: ArrayDDIMScheduler.cs, eta 0 --------------------------------------------------------

/** torch.linspace(start, end, n, dtype=float32) as ArrayDDIMScheduler.TorchLinspace: from the start up to halfway, from the end after. */
function torchLinspace(start, end, count) {
  const values = new Float32Array(count);
  if (count === 1) { values[0] = start; return values; }
  const step = f32(f32(end - start) / (count - 1)), halfway = Math.floor(count / 2);
  for (let i = 0; i < count; i++) values[i] = i < halfway ? f32(start + f32(step * i)) : f32(end - f32(step * (count - i - 1)));
  return values;
}


/** A scheduler_config.json's DDIM keys with DDIMScheduler's defaults (ArrayDDIMScheduler.ParseConfig); null keys keep the default, null flags are false. */
export function ddimConfig(json) {
  const has = key => json[key] !== undefined && json[key] !== null;
  const value = (key, fallback) => has(key) ? json[key] : fallback;
  const flag = (key, fallback) => json[key] === undefined ? fallback : json[key] === true;
  if (flag('thresholding', false)) throw new Error('scheduler_config.json: thresholding is not supported. Set "thresholding": false.');
  return {
    numTrainTimesteps: Math.trunc(value('num_train_timesteps', 1000)),
    betaStart: value('beta_start', 0.0001),
    betaEnd: value('beta_end', 0.02),
    betaSchedule: value('beta_schedule', 'linear'),
    trainedBetas: has('trained_betas') ? json.trained_betas : null,
    rescaleBetasZeroSnr: flag('rescale_betas_zero_snr', false),
    predictionType: value('prediction_type', 'epsilon'),
    clipSample: flag('clip_sample', true),
    clipSampleRange: value('clip_sample_range', 1),
    timestepSpacing: value('timestep_spacing', 'leading'),
    stepsOffset: Math.trunc(value('steps_offset', 0)),
    setAlphaToOne: flag('set_alpha_to_one', true),
  };
}

/** float32 betas as diffusers' constructors compute them (ArrayDDIMScheduler.Betas). */
function betas(config) {
  const n = config.numTrainTimesteps;
  let b;
  if (config.trainedBetas) {
    if (config.trainedBetas.length !== n) throw new Error(`trained_betas has ${config.trainedBetas.length} values but num_train_timesteps is ${n}; they must agree.`);
    b = Float32Array.from(config.trainedBetas);
  } else if (config.betaSchedule === 'linear') b = torchLinspace(f32(config.betaStart), f32(config.betaEnd), n);
  else if (config.betaSchedule === 'scaled_linear') b = torchLinspace(f32(Math.sqrt(config.betaStart)), f32(Math.sqrt(config.betaEnd)), n).map(x => f32(x * x));
  else if (config.betaSchedule === 'squaredcos_cap_v2') {
    const bar = t => Math.cos((t + 0.008) / 1.008 * Math.PI / 2) ** 2;
    b = new Float32Array(n);
    for (let i = 0; i < n; i++) b[i] = f32(Math.min(1 - bar((i + 1) / n) / bar(i / n), 0.999));
  } else throw new Error(`beta_schedule '${config.betaSchedule}' is not supported. Supported: linear, scaled_linear, squaredcos_cap_v2, or trained_betas.`);
  return config.rescaleBetasZeroSnr ? rescaleZeroTerminalSnr(b) : b;
}

/** cumprod(1 - betas): the product in float64, each entry rounded to float32 (ArrayDDIMScheduler.Cumprod). */
function cumprod(b) {
  const out = new Float32Array(b.length);
  let product = 1;
  for (let i = 0; i < b.length; i++) { product *= f32(1 - b[i]); out[i] = f32(product); }
  return out;
}

/** Zero terminal SNR (Lin et al. 2023, Algorithm 1) in float32 (ArrayDDIMScheduler.RescaleZeroTerminalSnr). */
function rescaleZeroTerminalSnr(b) {
  const sqrtBar = cumprod(b).map(a => f32(Math.sqrt(a)));
  const n = sqrtBar.length, first = sqrtBar[0], last = sqrtBar[n - 1], scale = f32(first / f32(first - last));
  const bar = sqrtBar.map(a => f32(f32(a - last) * scale)).map(a => f32(a * a));
  const out = new Float32Array(n);
  out[0] = f32(1 - bar[0]);
  for (let i = 1; i < n; i++) out[i] = f32(1 - f32(bar[i] / bar[i - 1]));
  return out;
}

/** diffusers' DDIM set_timesteps, descending (ArrayDDIMScheduler.SetTimesteps). */
export function ddimTimesteps(config, steps) {
  const T = config.numTrainTimesteps;
  if (!Number.isInteger(steps) || steps < 1 || steps > T) throw new Error(`The number of steps must be between 1 and num_train_timesteps (${T}), not ${steps}.`);
  if (config.timestepSpacing === 'linspace') return numpyLinspace(0, T - 1, steps).map(roundHalfEven).reverse();
  if (config.timestepSpacing === 'leading') {
    const ratio = Math.floor(T / steps), out = [];
    for (let i = steps - 1; i >= 0; i--) out.push(i * ratio + config.stepsOffset);
    return out;
  }
  if (config.timestepSpacing === 'trailing') return numpyArange(T, 0, -T / steps).map(t => roundHalfEven(t) - 1);
  throw new Error(`timestep_spacing '${config.timestepSpacing}' is not supported. Supported: leading, trailing, linspace.`);
}

/** Deterministic DDIM (eta 0) over a ddimConfig: ArrayDDIMScheduler with the same float32 arithmetic in the same order. */
export function ddimScheduler(config) {
  if (!['epsilon', 'v_prediction', 'sample'].includes(config.predictionType))
    throw new Error(`DDIM: prediction_type '${config.predictionType}' is not supported. Supported: epsilon, v_prediction, sample.`);
  const alphasCumprod = cumprod(betas(config));
  const finalAlphaCumprod = config.setAlphaToOne ? 1 : alphasCumprod[0];
  let steps = 0;
  return {
    alphasCumprod,
    setTimesteps(n) {
      const ts = ddimTimesteps(config, n);
      if (ts.some(t => t < 0 || t >= config.numTrainTimesteps))
        throw new Error(`${n} steps with ${config.timestepSpacing} spacing give a timestep outside [0, ${config.numTrainTimesteps - 1}]; choose another number of steps.`);
      steps = n;
      return ts;
    },
    /** x_{t-1} from the model output at t and x_t (Float32Arrays of one size). */
    step(modelOutput, t, sample) {
      const prevT = t - Math.floor(config.numTrainTimesteps / steps);
      // 1. alpha-bar at t and t-1
      const alphaProdT = alphasCumprod[t], alphaProdTPrev = prevT >= 0 ? alphasCumprod[prevT] : finalAlphaCumprod;
      const betaProdT = f32(1 - alphaProdT);
      const sqrtAlphaProdT = f32(Math.sqrt(alphaProdT)), sqrtBetaProdT = f32(Math.sqrt(betaProdT));
      // 4. eta 0: no variance, so the direction scale is sqrt(1 - alpha-bar_{t-1} - 0)
      const directionScale = f32(Math.sqrt(f32(f32(1 - alphaProdTPrev) - 0)));
      const sampleScale = f32(Math.sqrt(alphaProdTPrev));
      const clip = f32(config.clipSampleRange);
      const prev = new Float32Array(sample.length);
      for (let i = 0; i < sample.length; i++) {
        const x = sample[i], output = modelOutput[i];
        // 2. predicted x0 and epsilon
        let predOriginal, predEpsilon;
        if (config.predictionType === 'epsilon') { predOriginal = f32(f32(x - f32(output * sqrtBetaProdT)) / sqrtAlphaProdT); predEpsilon = output; }
        else if (config.predictionType === 'sample') { predOriginal = output; predEpsilon = f32(f32(x - f32(predOriginal * sqrtAlphaProdT)) / sqrtBetaProdT); }
        else { predOriginal = f32(f32(x * sqrtAlphaProdT) - f32(output * sqrtBetaProdT)); predEpsilon = f32(f32(output * sqrtAlphaProdT) + f32(x * sqrtBetaProdT)); }
        // 3. clip x0
        if (config.clipSample) predOriginal = Math.min(clip, Math.max(-clip, predOriginal));
        // 5. x_{t-1}
        prev[i] = f32(f32(predOriginal * sampleScale) + f32(predEpsilon * directionScale));
      }
      return prev;
    },
  };
}

// ---- seeded noise ------------------------------------------------------------------------------------------------

// The single-model page's generator (ondevice.mjs): the same seed gives the same noise in every browser, but it is
// neither torch.randn's noise for that seed nor the C# demo's (System.Random), so the same seed gives different images
// here and in dprune sample. To reproduce another runner's image, pass its noise to generate().
export { gaussianNoise };

// ---- the pipeline ------------------------------------------------------------------------------------------------

/** Reads JSON as diffusers writes it: bare Infinity, -Infinity and NaN (which JSON.parse refuses) become null. */
async function fetchJson(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return JSON.parse((await response.text()).replace(/-?\bInfinity\b|\bNaN\b/g, 'null'));
}

/** An ONNX Runtime Web session on one graph of the bundle: WebGPU where the browser offers it, else WebAssembly. */
async function openSession(url, preferGpu) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  const model = new Uint8Array(await response.arrayBuffer());
  const providers = preferGpu && navigator.gpu ? ['webgpu', 'wasm'] : ['wasm'];
  for (const provider of providers) {
    try {
      return { session: await ort.InferenceSession.create(model, { executionProviders: [provider] }), provider };
    } catch (e) {
      if (provider === providers[providers.length - 1]) throw new Error(`${url} could not be opened by ONNX Runtime Web (${e.message}); export the pipeline again.`);
    }
  }
}

/**
 * Loads an ONNX pipeline bundle from its base URL (api/exports/NAME/): model_index.json (it must name
 * OnnxStableDiffusionPipeline), the configs and the three graphs. The scheduler is DDIM on the bundle's
 * scheduler_config.json whatever class it names (as `--scheduler ddim` in the C# demo), since DDIM is the only
 * scheduler here; <c>schedulerClass</c> says what the bundle named.
 */
export async function loadPipeline(baseUrl, preferGpu = true) {
  const index = await fetchJson(baseUrl + 'model_index.json');
  if (index._class_name !== 'OnnxStableDiffusionPipeline')
    throw new Error(`model_index.json names ${index._class_name ?? 'no class'}, not OnnxStableDiffusionPipeline; export the pipeline with dprune export.`);
  const unetConfig = await fetchJson(baseUrl + 'unet/config.json');
  const vaeConfig = await fetchJson(baseUrl + 'vae_decoder/config.json');
  const schedulerJson = await fetchJson(baseUrl + 'scheduler/scheduler_config.json');
  const schedulerClass = (Array.isArray(index.scheduler) && index.scheduler[1]) || schedulerJson._class_name || 'an unnamed scheduler';
  // unet/config.json: latent channels and size (one size or [h, w]; diffusers' default 64), size multiple 2^(blocks - 1)
  const channels = unetConfig.in_channels ?? 4;
  const size = unetConfig.sample_size == null ? [64, 64] : Array.isArray(unetConfig.sample_size)
    ? (unetConfig.sample_size.length === 1 ? [unetConfig.sample_size[0], unetConfig.sample_size[0]] : unetConfig.sample_size) : [unetConfig.sample_size, unetConfig.sample_size];
  const sizeMultiple = 2 ** ((unetConfig.block_out_channels ?? [320, 640, 1280, 1280]).length - 1);
  const scalingFactor = vaeConfig.scaling_factor ?? 0.18215, shiftFactor = vaeConfig.shift_factor ?? null;
  if (!(scalingFactor > 0) || !Number.isFinite(scalingFactor)) throw new Error(`vae_decoder/config.json: scaling_factor must be a positive number, not ${scalingFactor}.`);
  const config = ddimConfig(schedulerJson);
  ddimScheduler(config); // refuses an unsupported schedule now, not at the first image
  const textEncoder = await openSession(baseUrl + 'text_encoder/model.onnx', preferGpu);
  const unet = await openSession(baseUrl + 'unet/model.onnx', preferGpu);
  const vaeDecoder = await openSession(baseUrl + 'vae_decoder/model.onnx', preferGpu);
  // input_ids as the graph declares them (the exporter writes int32; int64 is accepted as the C# runners accept it)
  const idsMeta = (textEncoder.session.inputMetadata ?? []).find(m => m.name === 'input_ids');
  const int64Ids = idsMeta?.type === 'int64';
  return {
    baseUrl, index, unetConfig, vaeConfig, schedulerConfig: config, schedulerClass, channels, size, sizeMultiple, scalingFactor, shiftFactor,
    textEncoder: textEncoder.session, unet: unet.session, vaeDecoder: vaeDecoder.session, provider: unet.provider, int64Ids,
  };
}

/** Asks the Studio for the ids of a prompt and a negative prompt (the bundle's own CLIP tokenizer). */
export async function tokenize(pipeline, prompt, negativePrompt = '') {
  const response = await fetch(pipeline.baseUrl + 'tokenize', {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ prompt, negative_prompt: negativePrompt }),
  });
  const body = await response.json();
  if (!response.ok) throw new Error(body.detail ?? `tokenize: HTTP ${response.status}`);
  return body;
}

/** text_encoder/model.onnx on one text's ids [1, length]: its states [1, length, hidden] (OnnxStableDiffusionSession.EncodeText). */
async function encodeText(pipeline, ids) {
  const data = pipeline.int64Ids ? BigInt64Array.from(ids, i => BigInt(i)) : Int32Array.from(ids);
  const result = await pipeline.textEncoder.run({ input_ids: new ort.Tensor(pipeline.int64Ids ? 'int64' : 'int32', data, [1, ids.length]) });
  const states = result.last_hidden_state;
  return { data: states.data, dims: states.dims };
}

/** Repeats one text's states [1, T, D] for each of <c>batch</c> images. */
function repeatStates(states, batch) {
  const out = new Float32Array(states.data.length * batch);
  for (let b = 0; b < batch; b++) out.set(states.data, b * states.data.length);
  return out;
}

/**
 * Prompt ids to image from given initial latents (OnnxStableDiffusionSession.Generate): text_encoder on the ids (and, for a
 * guidance scale above 1, on the negative ids), DDIM over the unet with classifier-free guidance in one batch of 2B in
 * Stable Diffusion's order [negative; prompt], eps = uncond + g (cond - uncond), then vae_decoder on latents /
 * scaling_factor (+ shift_factor).
 * @param {object} options inputIds and negativeInputIds (model_max_length ids each, from tokenize()), noise (a flat
 *   Float32Array of [batch, C, h, w]), shape ([batch, C, h, w]; default [1, C, sample_size]), steps, guidance, onStep(step, steps, ms).
 * @returns {{latents: Float32Array, latentShape: number[], image: Float32Array, imageShape: number[], timesteps: number[], times: number[]}}
 */
export async function generate(pipeline, { inputIds, negativeInputIds, noise, shape = null, steps = 25, guidance = 7.5, onStep = null }) {
  const C = pipeline.channels;
  shape = shape ?? [noise.length / (C * pipeline.size[0] * pipeline.size[1]), C, pipeline.size[0], pipeline.size[1]];
  const [batch, , h, w] = shape;
  if (shape.length !== 4 || shape[1] !== C || !Number.isInteger(batch) || batch < 1 || noise.length !== batch * C * h * w)
    throw new Error(`The noise must be latents [batch, ${C}, height, width], not [${shape.join(', ')}] (${noise.length} values).`);
  if (h % pipeline.sizeMultiple !== 0 || w % pipeline.sizeMultiple !== 0)
    throw new Error(`Latent height and width must be multiples of ${pipeline.sizeMultiple} for this U-Net, not ${h} x ${w}.`);
  if (!Number.isFinite(guidance)) throw new Error(`The guidance scale must be a finite number, not ${guidance}.`);
  const guided = guidance > 1;

  // 1. the text: one text at a time, repeated per image
  const prompt = await encodeText(pipeline, inputIds);
  const [, T, D] = prompt.dims;
  const promptStates = repeatStates(prompt, batch);
  const negativeStates = guided ? repeatStates(await encodeText(pipeline, negativeInputIds), batch) : null;
  const states = guided ? new Float32Array(2 * promptStates.length) : promptStates;
  if (guided) { states.set(negativeStates, 0); states.set(promptStates, promptStates.length); }
  const rows = guided ? 2 * batch : batch;
  const statesTensor = new ort.Tensor('float32', states, [rows, T, D]);

  // 2. the denoising loop (ArrayDiffusionSampler.SampleText / TextGuided)
  const scheduler = ddimScheduler(pipeline.schedulerConfig);
  const timesteps = scheduler.setTimesteps(steps);
  const half = batch * C * h * w, scale = f32(guidance);
  let latents = Float32Array.from(noise); // DDIM's init_noise_sigma is 1 and scale_model_input the identity
  const times = [];
  for (let s = 0; s < timesteps.length; s++) {
    const started = performance.now();
    const sample = new Float32Array(rows * C * h * w);
    sample.set(latents, 0);
    if (guided) sample.set(latents, half);
    const result = await pipeline.unet.run({
      sample: new ort.Tensor('float32', sample, [rows, C, h, w]),
      timestep: new ort.Tensor('float32', new Float32Array(rows).fill(timesteps[s]), [rows]),
      encoder_hidden_states: statesTensor,
    });
    const both = result.out_sample.data;
    if (both.length !== rows * C * h * w) throw new Error(`unet/model.onnx gave ${both.length} values for latents [${rows}, ${C}, ${h}, ${w}]; export the pipeline again.`);
    let prediction;
    if (guided) {
      prediction = new Float32Array(half);
      for (let i = 0; i < half; i++) {
        const uncond = both[i], cond = both[half + i];
        prediction[i] = f32(uncond + f32(f32(cond - uncond) * scale));
      }
    } else prediction = both;
    latents = scheduler.step(prediction, timesteps[s], latents);
    times.push(performance.now() - started);
    if (onStep) await onStep(s + 1, timesteps.length, times[times.length - 1]);
  }

  // 3. the VAE decoder on latents / scaling_factor (+ shift_factor)
  const scaling = f32(pipeline.scalingFactor), shift = pipeline.shiftFactor == null ? null : f32(pipeline.shiftFactor);
  const scaled = latents.map(v => shift == null ? f32(v / scaling) : f32(f32(v / scaling) + shift));
  const decoded = (await pipeline.vaeDecoder.run({ latent_sample: new ort.Tensor('float32', scaled, shape) })).sample;
  return { latents, latentShape: shape, image: decoded.data, imageShape: decoded.dims.map(Number), timesteps, times };
}

/** Draws images [B, 3, H, W] in [-1, 1] side by side ((x / 2 + 0.5) clamped, as the pipelines' postprocess), small ones scaled up. */
export function drawImages(canvas, image, imageShape) {
  const [B, C, H, W] = imageShape, pad = 2, scale = Math.max(1, Math.floor(256 / Math.max(H, W)));
  canvas.width = B * (W * scale + pad) + pad;
  canvas.height = H * scale + 2 * pad;
  const ctx = canvas.getContext('2d');
  ctx.fillStyle = '#808080';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const tile = document.createElement('canvas');
  tile.width = W; tile.height = H;
  const pixels = tile.getContext('2d').createImageData(W, H);
  for (let b = 0; b < B; b++) {
    for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) {
      const o = (y * W + x) * 4;
      for (let c = 0; c < 3; c++) {
        const v = image[((b * C + (C === 1 ? 0 : c)) * H + y) * W + x];
        pixels.data[o + c] = Math.round(Math.min(1, Math.max(0, v / 2 + 0.5)) * 255);
      }
      pixels.data[o + 3] = 255;
    }
    tile.getContext('2d').putImageData(pixels, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(tile, pad + b * (W * scale + pad), pad, W * scale, H * scale);
  }
}

/**
 * Wires the page for a pipeline bundle: loads it, then on the button tokenizes the prompts on the server, draws seeded
 * noise, runs generate() with a progress bar and the time per step, and draws the image. For tests, window.dprune holds
 * the pipeline and generate(options) / tokenize(prompt, negative) on it (generate takes given noise: see its options).
 */
export async function mountPipeline(root, baseUrl) {
  const $ = selector => root.querySelector(selector);
  const status = $('.ondevice-status'), progress = $('.ondevice-progress'), run = $('.ondevice-run');
  try {
    status.textContent = 'Loading the pipeline (text encoder, U-Net, VAE decoder) into ONNX Runtime Web...';
    const pipeline = await loadPipeline(baseUrl);
    const where = pipeline.provider === 'webgpu' ? 'WebGPU' : 'WebAssembly';
    window.dprune = {
      pipeline,
      tokenize: (prompt, negativePrompt) => tokenize(pipeline, prompt, negativePrompt),
      generate: async options => {
        const result = await generate(pipeline, { ...options, noise: Float32Array.from(options.noise) });
        return { ...result, latents: Array.from(result.latents), image: Array.from(result.image) };
      },
      gaussianNoise,
    };
    const ddimNote = pipeline.schedulerClass === 'DDIMScheduler' ? 'DDIM' : `DDIM on its ${pipeline.schedulerClass}'s noise schedule`;
    status.textContent = `Ready: OnnxStableDiffusionPipeline, latents ${pipeline.channels} x ${pipeline.size[0]} x ${pipeline.size[1]}, ${ddimNote}, on ${where}.`;
    root.dataset.ready = 'true';
    run.disabled = false;
    run.addEventListener('click', async () => {
      const steps = Math.max(1, Math.min(1000, parseInt($('.ondevice-steps').value, 10) || 25));
      const seed = parseInt($('.ondevice-seed').value, 10) || 0;
      const guidance = parseFloat($('.ondevice-guidance').value);
      run.disabled = true;
      delete root.dataset.sampled;
      try {
        status.textContent = 'Tokenizing the prompts on the Studio...';
        const ids = await tokenize(pipeline, $('.ondevice-prompt').value, $('.ondevice-negative').value);
        const [h, w] = pipeline.size;
        const noise = gaussianNoise(pipeline.channels * h * w, seed);
        progress.max = steps;
        progress.value = 0;
        const started = performance.now();
        const result = await generate(pipeline, {
          inputIds: ids.input_ids, negativeInputIds: ids.negative_input_ids, noise, shape: [1, pipeline.channels, h, w],
          steps, guidance: Number.isFinite(guidance) ? guidance : 7.5,
          onStep: async (done, total, ms) => {
            progress.value = done;
            status.textContent = `Step ${done}/${total}: ${ms.toFixed(1)} ms`;
            await new Promise(r => setTimeout(r, 0)); // let the page paint
          },
        });
        drawImages($('.ondevice-canvas'), result.image, result.imageShape);
        const sorted = [...result.times].sort((a, b) => a - b);
        const truncated = ids.prompt_truncated ? ` The prompt was cut to its first ${ids.model_max_length - 2} tokens.` : '';
        status.textContent = `1 image in ${steps} steps on ${where} in this browser: ${sorted[Math.floor(sorted.length / 2)].toFixed(1)} ms per step (median), ` +
          `${((performance.now() - started) / 1000).toFixed(2)} s in all.${truncated}`;
        root.dataset.sampled = 'true';
      } catch (e) {
        status.textContent = `Generation failed: ${e.message}`;
      } finally {
        run.disabled = false;
      }
    });
  } catch (e) {
    status.textContent = `The pipeline could not be loaded: ${e.message}`;
    root.dataset.failed = 'true';
  }
}
