// Drives Debian's headless Chromium through the ops dashboard, as an
// operator would: sign in with HTTP Basic (the token as password), see the
// dead letter, click "Resend", watch it leave the list, save a screenshot.
//
//   node tests/browser/ops.mjs URL TOKEN SCREENSHOT
//
// Prints one JSON line with what it saw; exits non-zero on any failure.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [url, token, screenshot] = process.argv.slice(2);
if (!url || !token || !screenshot) {
  console.error('usage: node ops.mjs URL TOKEN SCREENSHOT');
  process.exit(2);
}

const profile = mkdtempSync(join(tmpdir(), 'email2fa-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  httpCredentials: { username: 'operator', password: token },
  viewport: { width: 1366, height: 900 },
});
try {
  const page = context.pages()[0] ?? await context.newPage();
  const response = await page.goto(url + '/ops', { waitUntil: 'load' });
  if (response.status() !== 200) throw new Error('GET /ops answered ' + response.status());
  const rows = page.locator('tr[data-dead-letter]');
  await rows.first().waitFor({ timeout: 10000 });
  const before = await rows.count();
  const id = await rows.first().getAttribute('data-dead-letter');
  const recipient = (await rows.first().locator('td').nth(3).innerText()).trim();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
  await page.screenshot({ path: screenshot.replace(/\.png$/, '-before.png'), fullPage: true });

  const answer = page.waitForResponse((r) => r.url().endsWith('/ops/dead-letters/' + id + '/resend'));
  await rows.first().locator('button.resend').click();
  const resent = await answer;
  if (resent.status() !== 200) throw new Error('resend answered ' + resent.status());
  await page.locator(`tr[data-dead-letter="${id}"]`).waitFor({ state: 'detached', timeout: 10000 });
  const after = await page.locator('tr[data-dead-letter]').count();
  await page.waitForTimeout(300);
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({ before, after, id, recipient, overflow, delivery_id: (await resent.json()).delivery_id }));
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
