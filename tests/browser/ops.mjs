// Drives Debian's headless Chromium through the ops dashboard, as an
// operator would, on a phone (390 × 844) and on a laptop (1366 × 900):
// sign in with HTTP Basic (the token as password); on each screen check
// that nothing overflows sideways and that every action button is visible
// and hit-testable (the element at its centre is the button); save a
// screenshot. On the laptop also: the confirmation of "Resend N matching"
// states N, the detail dialog shows the attempts, "Retry now" and "Resend"
// work.
//
//   node tests/browser/ops.mjs URL TOKEN SCREENSHOT_DIR
//
// Writes SCREENSHOT_DIR/ops-phone.png and ops-desktop.png. Prints one JSON
// line with what it saw; exits non-zero on any failure.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [url, token, shots] = process.argv.slice(2);
if (!url || !token || !shots) {
  console.error('usage: node ops.mjs URL TOKEN SCREENSHOT_DIR');
  process.exit(2);
}

const ACTIONS = 'button.resend, button.discard, button.details, button.retry, #resend-matching, #discard-matching';

/** Each action button: visible, and the element at its centre is it. */
async function tappable(page) {
  const buttons = page.locator(ACTIONS);
  const seen = [];
  for (let i = 0; i < await buttons.count(); i++) {
    const button = buttons.nth(i);
    await button.scrollIntoViewIfNeeded();
    const check = await button.evaluate((el) => {
      const r = el.getBoundingClientRect();
      const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
      return { label: el.textContent.trim(), width: Math.round(r.width), height: Math.round(r.height),
        hit: hit === el || el.contains(hit) };
    });
    seen.push({ ...check, visible: await button.isVisible() });
  }
  return seen;
}

const overflows = (page) => page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);

const profile = mkdtempSync(join(tmpdir(), 'email2fa-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  httpCredentials: { username: 'operator', password: token },
  viewport: { width: 390, height: 844 },
});
try {
  const page = context.pages()[0] ?? await context.newPage();
  const open = async () => {
    const response = await page.goto(url + '/ops', { waitUntil: 'load' });
    if (response.status() !== 200) throw new Error('GET /ops answered ' + response.status());
    await page.locator('tr[data-dead-letter]').first().waitFor({ timeout: 10000 });
  };

  // A phone: rows are cards, every button can be tapped.
  await open();
  const phone = { overflow: await overflows(page), buttons: await tappable(page) };
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: join(shots, 'ops-phone.png'), fullPage: true });

  // A laptop.
  await page.setViewportSize({ width: 1366, height: 900 });
  await open();
  const desktop = { overflow: await overflows(page), buttons: await tappable(page) };
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: join(shots, 'ops-desktop.png'), fullPage: true });

  const rows = page.locator('tr[data-dead-letter]');
  const before = await rows.count();
  const id = await rows.first().getAttribute('data-dead-letter');
  const recipient = (await rows.first().locator('td').nth(3).innerText()).trim();

  // "Resend N matching" asks first, stating N; dismissed, nothing happens.
  const asked = new Promise((resolve) => page.once('dialog', async (dialog) => {
    resolve(dialog.message());
    await dialog.dismiss();
  }));
  await page.locator('#resend-matching').click();
  const confirmation = await asked;

  // The detail of the newest letter's delivery.
  await rows.first().locator('button.details').click();
  const dialog = page.locator('dialog#detail');
  await dialog.locator('table').waitFor({ timeout: 10000 });
  const detail = await dialog.innerText();
  await dialog.locator('#detail-close').click();

  // Retry now, on the retrying email.
  const retrying = page.locator('tr[data-retrying]').first();
  const retryId = await retrying.getAttribute('data-retrying');
  const retryAnswer = page.waitForResponse((r) => r.url().endsWith('/ops/deliveries/' + retryId + '/retry'));
  await retrying.locator('button.retry').click();
  const retried = await retryAnswer;

  // Resend the newest letter: it leaves the list.
  const answer = page.waitForResponse((r) => r.url().endsWith('/ops/dead-letters/' + id + '/resend'));
  await rows.first().locator('button.resend').click();
  const resent = await answer;
  if (resent.status() !== 200) throw new Error('resend answered ' + resent.status());
  await page.locator(`tr[data-dead-letter="${id}"]`).waitFor({ state: 'detached', timeout: 10000 });
  const after = await page.locator('tr[data-dead-letter]').count();

  console.log(JSON.stringify({ phone, desktop, before, after, id, recipient, confirmation, detail,
    retry_id: retryId, retry_status: retried.status(), delivery_id: (await resent.json()).delivery_id }));
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
