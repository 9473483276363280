// Loads every shader variant that `fcos-loss shaders --out DIR` wrote into a real
// browser's WebGPU (Debian's Chromium, headless: Dawn/Tint over SwiftShader) and
// makes a compute pipeline of each with its override constants, so that Tint's
// checks (WGSL uniformity analysis among them: barriers and subgroup operations
// only in uniform control flow) run on every variant. Prints one line per failure
// and a closing line `N passed, N failed`; exits non-zero on any failure.
//
//   node tests/browser/compile_shaders.mjs DIR
//
// Needs `playwright-core` (npm) and `/usr/bin/chromium` (apt-get install chromium).

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { withPage } from './chromium.mjs';

const dir = process.argv[2];
if (!dir) {
  console.error('usage: node compile_shaders.mjs DIR (from fcos-loss shaders --out DIR)');
  process.exit(2);
}
const manifest = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));
const variants = manifest.variants.map((v) => ({ ...v, source: readFileSync(join(dir, v.webgpu_file), 'utf8') }));

const results = await withPage(() => null, (page) =>
  page.evaluate(async (variants) => {
    if (!navigator.gpu) return { error: 'navigator.gpu is missing: WebGPU is not enabled' };
    const adapter = await navigator.gpu.requestAdapter();
    if (!adapter) return { error: 'no WebGPU adapter' };
    const hasSubgroups = adapter.features.has('subgroups');
    const device = await adapter.requestDevice({
      requiredFeatures: hasSubgroups ? ['subgroups'] : [],
      requiredLimits: {
        maxStorageBuffersPerShaderStage: adapter.limits.maxStorageBuffersPerShaderStage,
        maxComputeWorkgroupStorageSize: adapter.limits.maxComputeWorkgroupStorageSize,
        maxComputeInvocationsPerWorkgroup: adapter.limits.maxComputeInvocationsPerWorkgroup,
        maxComputeWorkgroupSizeX: adapter.limits.maxComputeWorkgroupSizeX,
      },
    });
    const info = adapter.info || {};
    const out = [];
    for (const v of variants) {
      if (v.features.includes('subgroups') && !hasSubgroups) {
        out.push({ stem: v.stem, ok: false, why: 'the adapter has no subgroups' });
        continue;
      }
      device.pushErrorScope('validation');
      const module = device.createShaderModule({ label: v.stem, code: v.source });
      const compiled = await module.getCompilationInfo();
      const errors = compiled.messages.filter((m) => m.type === 'error');
      let why = errors.map((m) => `${m.lineNum}:${m.linePos} ${m.message}`).join(' | ');
      if (!why) {
        try {
          await device.createComputePipelineAsync({
            label: v.stem,
            layout: 'auto',
            compute: { module, entryPoint: v.entry_point, constants: v.constants },
          });
        } catch (e) {
          why = `pipeline: ${e.message}`;
        }
      }
      const scoped = await device.popErrorScope();
      if (!why && scoped) why = scoped.message;
      out.push({ stem: v.stem, ok: !why, why });
    }
    return { adapter: `${info.vendor || '?'} ${info.architecture || '?'} ${info.description || ''}`.trim(), subgroups: hasSubgroups, out };
  }, variants));
if (results.error) {
  console.error(`browser: ${results.error}`);
  process.exit(1);
}
console.log(`WebGPU adapter: ${results.adapter} (subgroups: ${results.subgroups})`);
let passed = 0;
let failed = 0;
for (const r of results.out) {
  if (r.ok) passed++;
  else {
    failed++;
    console.log(`FAILED ${r.stem}: ${r.why}`);
  }
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
