// Headless Chromium with WebGPU on SwiftShader (Dawn/Tint), a page served on
// localhost (WebGPU needs a secure context), shared by the browser checks.
//
// `withPage(files, fn)` serves `files(path)` (a path → { body, type } or null)
// under http://localhost:PORT/, opens the page and returns `await fn(page)`.

import { createServer } from 'node:http';
import { chromium } from 'playwright-core';

export const CHROMIUM_ARGS = [
  '--no-sandbox', '--enable-unsafe-webgpu', '--enable-features=Vulkan',
  '--use-vulkan=swiftshader', '--use-webgpu-adapter=swiftshader', '--enable-unsafe-swiftshader',
  '--disable-gpu-sandbox', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--no-first-run', '--disable-quic',
];

export async function withPage(files, fn) {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
  });
  const server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url, 'http://localhost').pathname);
    const file = path === '/' ? { body: '<!doctype html><title>fcos-loss</title>', type: 'text/html' } : files(path);
    if (!file) {
      res.statusCode = 404;
      res.end(`no ${path}`);
      return;
    }
    res.setHeader('content-type', file.type || 'application/octet-stream');
    res.end(file.body);
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  try {
    const page = await browser.newPage();
    await page.goto(`http://localhost:${server.address().port}/`);
    return await fn(page);
  } finally {
    await browser.close();
    server.close();
  }
}
