// Replays calls that `fcos-loss capture CASE --out DIR` described, in a real
// browser's WebGPU (Debian's Chromium, headless: Dawn/Tint over SwiftShader): the
// same WGSL, override constants, Params bytes, buffers, bind groups and dispatches
// the crate records into wgpu. Reads back the per-image sums (and the gradients of
// a backward call) and compares them with the case's expected values under the
// tolerances the capture names (docs/contract.md §3, §4): each image's losses and
// their batch means within a relative 1e-4 (absolute floor 1e-5), the positives
// and the check flags exactly, each head's gradients within 1e-4 of its largest
// expected magnitude. Also prints the largest difference from the capturing
// adapter's own results. One line per capture, then `N passed, N failed`; exits
// non-zero on any failure.
//
//   node tests/browser/replay.mjs DIR...   (a capture folder, or a folder of them)
//
// Needs `playwright-core` (npm) and `/usr/bin/chromium` (apt-get install chromium).

import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join, normalize, sep } from 'node:path';
import { withPage } from './chromium.mjs';

const args = process.argv.slice(2);
if (args.length === 0) {
  console.error('usage: node replay.mjs DIR... (folders written by fcos-loss capture --out DIR)');
  process.exit(2);
}
const dirs = args.flatMap((d) =>
  existsSync(join(d, 'capture.json'))
    ? [d]
    : readdirSync(d)
        .map((n) => join(d, n))
        .filter((p) => statSync(p).isDirectory() && existsSync(join(p, 'capture.json')))
        .sort(),
);
if (dirs.length === 0) {
  console.error(`no capture.json under ${args.join(' ')}`);
  process.exit(2);
}

// The page fetches capture i's files as /c/i/<path inside its folder>.
function files(path) {
  const m = /^\/c\/(\d+)\/(.+)$/.exec(path);
  if (!m || !dirs[Number(m[1])]) return null;
  const root = normalize(dirs[Number(m[1])]);
  const file = normalize(join(root, m[2]));
  if (!file.startsWith(root + sep) || !existsSync(file)) return null;
  return { body: readFileSync(file) };
}

const results = await withPage(files, (page) => page.evaluate(replayAll, dirs.length));
if (results.error) {
  console.error(`browser: ${results.error}`);
  process.exit(1);
}
console.log(`WebGPU adapter: ${results.adapter} (subgroups: ${results.subgroups})`);
let passed = 0;
let failed = 0;
results.out.forEach((r, i) => {
  const name = dirs[i];
  if (r.ok) {
    passed++;
    console.log(`ok     ${name}: ${r.summary}`);
  } else {
    failed++;
    console.log(`FAILED ${name}: ${r.why}${r.summary ? ` (${r.summary})` : ''}`);
  }
});
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);

// Runs in the page: every capture on one device, each inside error scopes.
async function replayAll(count) {
  if (!navigator.gpu) return { error: 'navigator.gpu is missing: WebGPU is not enabled' };
  const adapter = await navigator.gpu.requestAdapter();
  if (!adapter) return { error: 'no WebGPU adapter' };
  const hasSubgroups = adapter.features.has('subgroups');
  const lim = adapter.limits;
  const device = await adapter.requestDevice({
    requiredFeatures: hasSubgroups ? ['subgroups'] : [],
    requiredLimits: {
      maxStorageBuffersPerShaderStage: lim.maxStorageBuffersPerShaderStage,
      maxStorageBufferBindingSize: lim.maxStorageBufferBindingSize,
      maxBufferSize: lim.maxBufferSize,
      maxComputeWorkgroupStorageSize: lim.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: lim.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupSizeX: lim.maxComputeWorkgroupSizeX,
    },
  });
  let lost = null;
  device.lost.then((info) => { lost = info.message || 'device lost'; });
  const info = adapter.info || {};
  const out = [];
  for (let i = 0; i < count; i++) {
    if (lost) {
      out.push({ ok: false, why: `the device was lost: ${lost}` });
      continue;
    }
    try {
      out.push(await replayOne(device, hasSubgroups, `/c/${i}/`));
    } catch (e) {
      out.push({ ok: false, why: String(e && e.message ? e.message : e) });
    }
  }
  return {
    adapter: `${info.vendor || '?'} ${info.architecture || '?'} ${info.description || ''}`.trim(),
    subgroups: hasSubgroups,
    out,
  };

  async function fetchBytes(url) {
    const r = await fetch(url);
    if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
    return new Uint8Array(await r.arrayBuffer());
  }

  async function replayOne(device, hasSubgroups, base) {
    const cap = await (await fetch(base + 'capture.json')).json();
    if (cap.format !== 'fcos-loss capture 1') throw new Error(`unknown capture format ${cap.format}`);
    if (cap.pipelines.some((p) => p.features.includes('subgroups')) && !hasSubgroups) {
      return { ok: false, why: 'the capture needs subgroups; the adapter has none' };
    }
    device.pushErrorScope('validation');
    device.pushErrorScope('out-of-memory');
    // Pipelines: the variant's WGSL, an explicit layout from its bindings.
    const pipelines = [];
    for (const p of cap.pipelines) {
      const code = new TextDecoder().decode(await fetchBytes(base + p.file));
      const module = device.createShaderModule({ label: p.stem, code });
      const compiled = await module.getCompilationInfo();
      const errors = compiled.messages.filter((m) => m.type === 'error');
      if (errors.length) throw new Error(`${p.stem}: ${errors.map((m) => `${m.lineNum}:${m.linePos} ${m.message}`).join(' | ')}`);
      const entries = [];
      p.bindings.forEach((type, binding) => {
        if (type) entries.push({ binding, visibility: GPUShaderStage.COMPUTE, buffer: { type } });
      });
      const layout = device.createBindGroupLayout({ label: p.stem, entries });
      const pipeline = await device.createComputePipelineAsync({
        label: p.stem,
        layout: device.createPipelineLayout({ bindGroupLayouts: [layout] }),
        compute: { module, entryPoint: p.entry_point, constants: p.constants },
      });
      pipelines.push({ pipeline, layout });
    }
    // Buffers, with their contents before the call.
    const buffers = [];
    for (const b of cap.buffers) {
      const usage = (b.usage === 'uniform' ? GPUBufferUsage.UNIFORM : GPUBufferUsage.STORAGE)
        | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
      const buf = device.createBuffer({ label: b.label, size: b.size, usage });
      device.queue.writeBuffer(buf, 0, await fetchBytes(base + b.file));
      buffers.push(buf);
    }
    // The commands in order: clears outside the compute pass, dispatches in it.
    const encoder = device.createCommandEncoder();
    let pass = null;
    for (const c of cap.commands) {
      if ('clear' in c) {
        if (pass) { pass.end(); pass = null; }
        encoder.clearBuffer(buffers[c.clear]);
        continue;
      }
      if (!pass) pass = encoder.beginComputePass();
      const p = pipelines[c.pipeline];
      const group = device.createBindGroup({
        layout: p.layout,
        entries: c.bindings.map((e) => ({
          binding: e.binding,
          resource: { buffer: buffers[e.buffer], offset: e.offset, size: e.size },
        })),
      });
      pass.setPipeline(p.pipeline);
      pass.setBindGroup(0, group);
      pass.dispatchWorkgroups(...c.workgroups);
    }
    if (pass) pass.end();
    // The results, copied out.
    const ranges = [['image_sums', cap.results.image_sums]];
    for (const [h, r] of Object.entries(cap.results.gradients)) ranges.push([h, r]);
    const staging = ranges.map(([name, r]) => {
      const s = device.createBuffer({ label: `read ${name}`, size: r.size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
      encoder.copyBufferToBuffer(buffers[r.buffer], r.offset, s, 0, r.size);
      return s;
    });
    device.queue.submit([encoder.finish()]);
    const oom = await device.popErrorScope();
    const invalid = await device.popErrorScope();
    if (invalid || oom) throw new Error((invalid || oom).message);
    const got = {};
    for (let k = 0; k < ranges.length; k++) {
      await staging[k].mapAsync(GPUMapMode.READ);
      got[ranges[k][0]] = staging[k].getMappedRange().slice(0);
      staging[k].unmap();
      staging[k].destroy();
    }
    for (const b of buffers) b.destroy();
    const native = {};
    for (const [name, r] of ranges) native[name] = (await fetchBytes(base + r.native_file)).buffer;
    return compare(cap, got, native, base);
  }

  async function compare(cap, got, native, base) {
    const tol = cap.tolerance;
    const f = cap.results.image_sums_fields;
    const stride = cap.results.image_sums_stride;
    const view = new DataView(got.image_sums);
    const field = (b, name) => {
      const [at, type] = f[name];
      return type === 'u32' ? view.getUint32(b * stride + at, true) : view.getFloat32(b * stride + at, true);
    };
    const why = [];
    // docs/contract.md §8, per image: each sum over max(n, 1); the batch mean.
    const per = { cls: [], cnt: [], reg: [] };
    for (let b = 0; b < cap.batch; b++) {
      const n = field(b, 'num_pos');
      const flags = field(b, 'flags');
      if (flags !== 0) why.push(`image ${b}: check flags ${flags}`);
      if (n !== cap.expected.num_pos[b]) why.push(`image ${b}: ${n} positives, expected ${cap.expected.num_pos[b]}`);
      for (const k of ['cls', 'cnt', 'reg']) per[k].push(field(b, k) / Math.max(n, 1));
    }
    const floor = tol.loss_abs / tol.loss_rel;
    const rel = (a, e) => Math.abs(a - e) / Math.max(Math.abs(e), floor);
    const mean = (v) => v.reduce((s, x) => s + x, 0) / Math.max(v.length, 1);
    let lossErr = 0;
    for (const k of ['cls', 'cnt', 'reg']) {
      for (let b = 0; b < cap.batch; b++) lossErr = Math.max(lossErr, rel(per[k][b], cap.expected[k][b]));
      lossErr = Math.max(lossErr, rel(mean(per[k]), mean(cap.expected[k])));
    }
    if (!(lossErr <= tol.loss_rel)) why.push(`losses differ by ${lossErr.toExponential(2)} relative`);
    let gradErr = 0;
    for (const [h, r] of Object.entries(cap.results.gradients)) {
      const g = new Float32Array(got[h]);
      const want = new Float32Array((await fetchBytes(base + r.expected_file)).buffer);
      if (want.length !== g.length) {
        why.push(`${h}: ${g.length} gradients, ${want.length} expected`);
        continue;
      }
      let scale = 0;
      let err = 0;
      for (let k = 0; k < g.length; k++) {
        const d = Math.abs(g[k] - want[k]);
        err = Number.isNaN(d) ? Infinity : Math.max(err, d);
        scale = Math.max(scale, Math.abs(want[k]));
      }
      const e = err === 0 ? 0 : err / scale;
      gradErr = Math.max(gradErr, e);
      if (!(e <= tol.grad)) why.push(`${h} gradients differ by ${e.toExponential(2)} of the largest`);
    }
    // Against the capturing adapter's own results (reported, not judged).
    let nativeDiff = 0;
    for (const name of Object.keys(got)) {
      const a = new Float32Array(got[name]);
      const b = new Float32Array(native[name]);
      const words = name === 'image_sums' ? (i) => (i % 8) < 5 : () => true;
      for (let k = 0; k < a.length; k++) {
        if (words(k)) nativeDiff = Math.max(nativeDiff, Math.abs(a[k] - b[k]) / Math.max(Math.abs(b[k]), 1e-30));
      }
    }
    const summary = `${cap.pass} ${cap.reg}${cap.from_boxes ? ' from boxes' : ''}${cap.subgroups ? ' subgroups' : ''}, `
      + `B ${cap.batch}, positives [${cap.expected.num_pos}], ${cap.commands.length} commands; `
      + `loss err ${lossErr.toExponential(2)}`
      + (Object.keys(cap.results.gradients).length ? `, grad err ${gradErr.toExponential(2)}` : '')
      + `; vs ${cap.adapter}: ${nativeDiff.toExponential(2)} relative`;
    return { ok: why.length === 0, why: why.join('; '), summary };
  }
}
