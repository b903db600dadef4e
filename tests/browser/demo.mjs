// Drives Debian's headless Chromium through the demo shop (`email2fa
// demo`), the whole help article end to end, as its users would: the admin
// configures the Services Manager, Jane enrolls with a code from the
// Mailbox, signs in with a code ("Send New Code", "Trust this device"),
// signs in again without one, deletes her entry; then 2FA is required for
// admins and the admin is sent to add a factor before the console.
//
//   node tests/browser/demo.mjs URL SCREENSHOT_DIR
//
// Saves a screenshot of each screen in SCREENSHOT_DIR, prints one JSON line
// with what it saw, and exits non-zero on any failure.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [url, shots] = process.argv.slice(2);
if (!url || !shots) {
  console.error('usage: node demo.mjs URL SCREENSHOT_DIR');
  process.exit(2);
}

const seen = {};
const started = Date.now();
const profile = mkdtempSync(join(tmpdir(), 'email2fa-demo-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  viewport: { width: 1200, height: 860 },
});
const page = context.pages()[0] ?? await context.newPage();

const shot = (name) => page.screenshot({ path: join(shots, name + '.png'), fullPage: true });
const notice = async () => (await page.locator('.notice').first().innerText({ timeout: 5000 })).trim();
const heading = async () => (await page.locator('h1').innerText()).trim();

async function signIn(user) {
  await page.goto(url + '/login');
  await page.fill('input[name=user]', user);
  await page.fill('input[name=password]', user);
  await page.click('#sign-in');
  await page.waitForLoadState('load');
}

async function signOut() {
  await page.click('#sign-out');
  await page.waitForLoadState('load');
}

// The newest code sent to `to`, read in the Mailbox in a second tab, as a
// user reads their inbox; waits for a mail newer than `after` (a count).
async function codeFor(to, after = 0) {
  const inbox = await context.newPage();
  try {
    for (let i = 0; i < 100; i++) {
      await inbox.goto(url + '/mailbox');
      const mails = inbox.locator(`section.mail[data-to="${to}"]`);
      if (await mails.count() > after) {
        const subject = await mails.first().locator('.subject').innerText();
        const code = subject.match(/\b(\d{6,10})\b/);
        if (code) return { code: code[1], subject, count: await mails.count() };
      }
      await inbox.waitForTimeout(200);
    }
    throw new Error('no new email to ' + to);
  } finally {
    await inbox.close();
  }
}

// The subject of the newest email to `to` that `wanted` accepts.
async function subjectFor(to, wanted) {
  const inbox = await context.newPage();
  try {
    for (let i = 0; i < 100; i++) {
      await inbox.goto(url + '/mailbox');
      const subject = await inbox.locator(`section.mail[data-to="${to}"] .subject`).first().innerText().catch(() => '');
      if (wanted(subject)) return subject.trim();
      await inbox.waitForTimeout(200);
    }
    throw new Error('no such email to ' + to);
  } finally {
    await inbox.close();
  }
}

async function mailCount(to) {
  const inbox = await context.newPage();
  await inbox.goto(url + '/mailbox');
  const count = await inbox.locator(`section.mail[data-to="${to}"]`).count();
  await inbox.close();
  return count;
}

try {
  // 0. The shop's front page.
  const front = await page.goto(url + '/');
  if (front.status() !== 200) throw new Error('GET / answered ' + front.status());
  await shot('01-home');

  // 1. Admin console → Services Manager (2FA is Inactive: no code yet).
  await signIn('admin');
  seen.admin_first_login = await heading();
  await page.fill('form[action="/admin/services/smtp"] input[name=title]', 'Shop mail');
  await page.fill('input[name=host]', 'smtp.shop.example');
  await page.fill('input[name=port]', '587');
  await page.selectOption('select[name=security]', 'starttls');
  await page.fill('input[name=username]', 'shop');
  await page.fill('input[name=password]', 'smtp-password');
  await page.fill('input[name=from_address]', 'shop@shop.example');
  await page.fill('input[name=from_name]', 'Demo Shop');
  await page.click('#save-smtp');
  seen.smtp_saved = await notice();
  await page.fill('form[action="/admin/services/auth"] input[name=title]', 'Email codes');
  await page.click('#save-auth');
  seen.auth_saved = await notice();
  await page.check('#admin-allowed');
  await page.check('#customer-allowed');
  await page.fill('input[name=resend_cooldown_seconds]', '3');
  await page.click('#save-settings');
  seen.settings_saved = await notice();
  seen.customer_status = (await page.locator('tr', { hasText: 'Customer' }).locator('.status').innerText()).trim();
  // Deleting the SMTP provider in use is refused, with email2fa's reason.
  await page.click('form[action="/admin/services/smtp/delete"] button');
  seen.provider_in_use = await notice();
  await shot('02-services-manager');
  await signOut();

  // 2. Jane: Account Settings → Secondary Authentication → "Add".
  await signIn('jane');
  seen.jane_first_login = await notice();
  await page.click('#add');
  await page.fill('#address', 'jane@example.com');
  await shot('03-add-address');
  await page.click('#send-code');
  seen.code_sent = await notice();
  await shot('04-enter-code');
  const enrollment = await codeFor('jane@example.com');
  seen.enrollment_subject = enrollment.subject;
  const wrong = enrollment.code === '000000' ? '111111' : '000000';
  await page.fill('#code', wrong);
  await page.click('#verify');
  seen.wrong_code = await notice();
  await shot('05-wrong-code');
  await page.fill('#code', enrollment.code);
  await page.click('#verify');
  seen.enrolled = await notice();
  seen.entry = (await page.locator('tr.entry .address').innerText()).trim();
  await shot('06-entry');
  await signOut();

  // 3. Login with a code: the code screen, "Send New Code", "Trust this device".
  await signIn('jane');
  seen.code_screen = await heading();
  await shot('07-code-screen');
  const first = await codeFor('jane@example.com', enrollment.count);
  await page.click('#send-new-code'); // within the 3 s cooldown: the shop says wait
  seen.resend_too_early = await notice();
  await page.waitForTimeout(3500);
  await page.click('#send-new-code');
  seen.resent = await notice();
  const second = await codeFor('jane@example.com', first.count);
  // The first code stopped working when the new one was sent.
  await page.fill('#code', first.code === second.code ? '000000' : first.code);
  await page.click('#verify');
  seen.old_code = await notice();
  await page.fill('#code', second.code);
  await page.check('#trust-device');
  await shot('08-trust-this-device');
  await page.click('#verify');
  seen.signed_in_with_code = await notice();
  seen.trust_cookie = (await context.cookies()).some((c) => c.name === 'e2fa_trust' && c.httpOnly);
  seen.trusted_browsers = await page.locator('#trusted-browsers tr').count();
  await signOut();

  // 4. Again, from the trusted browser: no code.
  const before = await mailCount('jane@example.com');
  await signIn('jane');
  seen.trusted_login = await notice();
  seen.trusted_login_after_ms = Date.now() - started;
  seen.mails_during_trusted_login = (await mailCount('jane@example.com')) - before;
  await shot('09-trusted-login');

  // 5. "Delete" on the entry: 2FA off, trusted browsers signed out, a notice emailed.
  await page.click('tr.entry button.danger');
  seen.deleted = await notice();
  seen.entry_left = await page.locator('tr.entry').count();
  await shot('10-entry-deleted');
  seen.removal_notice = await subjectFor('jane@example.com', (s) => !/\d{6}/.test(s));
  const inbox = await context.newPage();
  await inbox.goto(url + '/mailbox');
  await inbox.screenshot({ path: join(shots, '11-mailbox.png'), fullPage: true });
  await inbox.close();
  await signOut();

  // 6. Require 2FA for admins: the admin must add a factor first.
  await signIn('admin');
  await page.check('#require-admin');
  await page.click('#save-settings');
  seen.required_saved = await notice();
  await signOut();
  await signIn('admin');
  seen.required_redirect = new URL(page.url()).pathname;
  seen.required_notice = await notice();
  await page.goto(url + '/admin/services');
  seen.console_before_factor = new URL(page.url()).pathname;
  await shot('12-admin-must-add');
  await page.click('#send-code');
  const admin = await codeFor('admin@shop.example');
  await page.fill('#code', admin.code);
  await page.click('#verify');
  seen.admin_enrolled = await notice();
  seen.admin_lands_on = await heading();
  await shot('13-admin-console');
  await signOut();

  // 7. Refusals as the user reads them: five wrong codes lock the
  // challenge; then too many codes for one user in 15 minutes.
  await signIn('admin');
  for (let i = 0; i < 5; i++) {
    await page.fill('#code', '000000');
    await page.click('#verify');
    await page.waitForLoadState('load');
  }
  seen.locked = await notice();
  seen.locked_back_to = new URL(page.url()).pathname;
  await shot('14-locked');
  for (let i = 0; i < 6; i++) {
    await signIn('admin');
    if (new URL(page.url()).pathname === '/login') break;
  }
  seen.too_many_codes = await notice();
  await shot('15-too-many-codes');

  console.log(JSON.stringify(seen));
} catch (error) {
  await shot('failure').catch(() => {});
  console.log(JSON.stringify(seen));
  throw error;
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
