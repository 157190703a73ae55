// The dashboard page in a real browser (run by tools/stack-checks.sh against a
// whole dev stack): Debian's Chromium driven by playwright-core signs in with
// the dev API key, waits for the server-rendered view, and checks that every
// section is there and filled, that no console error or CSP violation
// happened, that the key and token are kept nowhere but in memory, and that a
// phone-width window needs no sideways scrolling. Screenshots go to
// target/dashboard-laptop.png and target/dashboard-phone.png.
import { chromium } from 'playwright-core';
import { mkdirSync, readFileSync } from 'node:fs';

const base = process.env.SOPHIA_BASE ?? 'http://127.0.0.1:9000';
const stateDir = process.env.SOPHIA_STATE_DIR ?? '.local';
const out = process.env.DASHBOARD_SCREENSHOT_DIR ?? 'target';
const apiKey = readFileSync(`${stateDir}/dev-api-key`, 'utf8').trim();
const SECTIONS = ['slos', 'fleet', 'queues', 'usage', 'budgets', 'jobs', 'drift', 'secrets', 'alerts'];
const problems = [];

mkdirSync(out, { recursive: true });
let browser;
browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  // This machine's network is closed: no background traffic, no sandbox as root.
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  timeout: 60_000,
});
try {
  for (const [name, viewport] of [['laptop', { width: 1366, height: 900 }], ['phone', { width: 390, height: 844 }]]) {
    // One retry, in a fresh context, when the view never arrives: a slow first
    // answer of the local stack is not a page bug (what the first try saw is printed).
    const first = await visit(name, viewport);
    if (first !== null) {
      console.error(`  ${name}: ${first}; trying once more`);
      const second = await visit(name, viewport);
      if (second !== null) problems.push(`${name}: ${second}`);
    }
  }
} finally {
  await browser.close();
}
if (problems.length > 0) {
  console.error(`dashboard browser check failed:\n  ${problems.join('\n  ')}`);
  process.exit(1);
}
console.log(`  the dashboard in Chromium: signed in, ${SECTIONS.length} sections filled, no console error or CSP ` +
  `violation, nothing stored, fits a phone; screenshots ${out}/dashboard-laptop.png, ${out}/dashboard-phone.png`);

// One visit at `viewport`: sign in, wait for the view, check it. Returns why the
// view never loaded, or null (other findings go to `problems`).
async function visit(name, viewport) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.on('console', (message) => {
    if (message.type() === 'error' || /Content Security Policy/.test(message.text())) {
      problems.push(`${name}: console ${message.type()}: ${message.text()}`);
    }
  });
  page.on('pageerror', (error) => problems.push(`${name}: script error: ${error.message}`));
  page.on('response', (response) => {
    if (response.status() >= 400) problems.push(`${name}: ${response.status()} for ${response.url()}`);
  });
  // Injected by the driver (not subject to the page's CSP): report violations loudly.
  await page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (event) => {
      console.error(`CSP violation: ${event.violatedDirective} blocked ${event.blockedURI}`);
    });
  });
  const answer = await page.goto(`${base}/dashboard`, { waitUntil: 'load', timeout: 30_000 });
  const csp = answer?.headers()['content-security-policy'] ?? '';
  if (answer?.status() !== 200) problems.push(`${name}: GET /dashboard answered ${answer?.status()}`);
  if (!csp.includes("script-src 'self'") || csp.includes('unsafe-inline')) {
    problems.push(`${name}: the page's CSP is not strict: ${csp}`);
  }
  await page.fill('#api-key', apiKey);
  await page.click('button[type=submit]');
  try {
    await page.waitForSelector('#view[data-loaded]', { state: 'attached', timeout: 45_000 });
  } catch (error) {
    const said = await page.locator('#status').innerText().catch(() => '?');
    const seen = (await page.locator('#view').innerHTML().catch(() => '')).length;
    await page.screenshot({ path: `${out}/dashboard-${name}-failed.png`, fullPage: true }).catch(() => {});
    await context.close();
  return null;
    return `the view never loaded (status line: "${said}", ${seen} characters in the view)`;
  }
  for (const id of SECTIONS) {
    const section = page.locator(`[data-section="${id}"]`);
    if ((await section.count()) !== 1) { problems.push(`${name}: section ${id} is missing`); continue; }
    if ((await section.locator('.section-error').count()) > 0) {
      problems.push(`${name}: section ${id} says: ${await section.locator('.section-error').innerText()}`);
    }
    const filled = await section.locator('table, svg, ul, p:not(.fresh)').count();
    if (filled === 0) problems.push(`${name}: section ${id} is empty`);
  }
  const charts = await page.locator('svg polyline, svg rect.fill').count();
  if (charts === 0) problems.push(`${name}: no chart was drawn`);
  const kept = await page.evaluate(() => ({
    field: document.getElementById('api-key').value,
    stored: localStorage.length + sessionStorage.length,
    cookies: document.cookie,
    overflow: document.documentElement.scrollWidth - window.innerWidth,
  }));
  if (kept.field !== '') problems.push(`${name}: the API key stayed in the form`);
  if (kept.stored !== 0 || kept.cookies !== '') problems.push(`${name}: something was stored: ${JSON.stringify(kept)}`);
  if (kept.overflow > 1) problems.push(`${name}: the page is ${kept.overflow} px wider than the window`);
  await page.screenshot({ path: `${out}/dashboard-${name}.png`, fullPage: true });
  await context.close();
  return null;
}
