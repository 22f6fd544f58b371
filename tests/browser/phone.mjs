// The browser as the agent's phone (SPEC §4 WebRTC), in headless Chromium
// driven by playwright-core. Run by tests/e2e/browser_phone.rs, which
// starts powerdial and the scripted PJSIP carrier (playing the lead's
// speech, recording what it hears) and creates the session; Chromium's
// fake microphone plays the agent's speech file (cfg.fake_audio).
//
// The agent signs in with their token, clicks "Use this browser as my
// phone" (the microphone meter must move), joins the session; when the
// carrier answers, the script samples getStats() for cfg.listen_s seconds:
// the inbound audio's packetsReceived must rise and its audioLevel be
// above zero (the lead's voice reaches the browser), the outbound audio's
// packetsSent must rise (the agent's voice leaves it). Then "Stop using
// this browser" hangs the phone up. A second browser whose microphone is
// refused must say so in words, and a page whose ICE checks go unanswered
// (the answer's candidate port rewritten to a dead one: UDP blocked) too.
//
// Input: one JSON argument {url, agent_token, session_id, agent, chromium,
// playwright, fake_audio, shots_dir, listen_s}.
// Output: one JSON line {ok, failures, steps, stats, ...}; exit status 0
// only when every check passed.

import { createRequire } from 'node:module';
import path from 'node:path';
import fs from 'node:fs';

const cfg = JSON.parse(process.argv[2] || '{}');
const require = createRequire(path.join(cfg.playwright || process.cwd(), 'noop.js'));
const { chromium } = require('playwright-core');

const result = { ok: false, failures: [], steps: [], stats: [], meter_max: 0, page_errors: [], screenshots: [] };
const t0 = Date.now();
const step = (s) => result.steps.push(`${((Date.now() - t0) / 1000).toFixed(1)}s ${s}`);
const fail = (s) => {
  result.failures.push(s);
  step('FAILED: ' + s);
};

async function shot(page, name) {
  const file = path.join(cfg.shots_dir, `phone-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  result.screenshots.push(file);
}

async function until(ms, fn) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) return null;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The audio RTP stats of the page's browser phone. */
const audioStats = (page) =>
  page.evaluate(async () => {
    const pc = window.powerdialPhone && window.powerdialPhone.pc;
    if (!pc) return null;
    const out = { state: pc.connectionState };
    (await pc.getStats()).forEach((r) => {
      if (r.type === 'inbound-rtp' && r.kind === 'audio') {
        out.packetsReceived = r.packetsReceived;
        out.audioLevel = r.audioLevel;
        out.totalAudioEnergy = r.totalAudioEnergy;
      }
      if (r.type === 'outbound-rtp' && r.kind === 'audio') out.packetsSent = r.packetsSent;
    });
    return out;
  });

let browser;
try {
  fs.mkdirSync(cfg.shots_dir, { recursive: true });
  const args = [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
    '--use-fake-ui-for-media-stream',
    '--use-fake-device-for-media-stream',
    `--use-file-for-fake-audio-capture=${cfg.fake_audio}`,
    '--autoplay-policy=no-user-gesture-required',
    // powerdial's media address in the test is 127.0.0.1; Chromium leaves
    // loopback out of ICE unless told.
    '--allow-loopback-in-peer-connection',
  ];
  browser = await chromium.launch({ executablePath: cfg.chromium || '/usr/bin/chromium', headless: true, args });
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await ctx.newPage();
  page.on('pageerror', (e) => result.page_errors.push(e.message));
  await page.goto(cfg.url);
  await page.getByLabel('Admin or agent token').fill(cfg.agent_token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('button', { name: 'Sign out' }).waitFor({ timeout: 10000 });
  step('signed in as ' + cfg.agent);

  await page.getByRole('button', { name: 'Use this browser as my phone' }).click();
  const up = await until(20000, async () => {
    const t = (await page.textContent('#phone-status')) || '';
    if (t.includes('could not start') || t.includes('refused') || t.includes('No audio path')) return t;
    return t.includes(`is ${cfg.agent}'s phone`) ? t : null;
  });
  if (!up || !up.includes('phone:')) fail('the browser phone did not come up: ' + (up || (await page.textContent('#phone-status'))));
  else step('browser phone up: ' + up.trim());
  // The microphone check: the fake microphone speaks, the meter moves.
  const meter = await until(8000, async () => {
    const v = Number(await page.getAttribute('#mic-level', 'value')) || Number(await page.evaluate(() => document.getElementById('mic-level').value));
    result.meter_max = Math.max(result.meter_max, v);
    return v > 0.02 ? v : null;
  });
  if (!meter) fail('the microphone meter did not move (max ' + result.meter_max + ')');
  await shot(page, 'up');

  // Join the session: powerdial calls the agent — here.
  await page.locator('#agent-session').selectOption(String(cfg.session_id));
  await page.getByRole('button', { name: 'Join', exact: true }).click();
  const connected = await until(30000, async () => {
    const s = ((await page.textContent('#cb-state')) || '').trim();
    return s === 'Connected' ? s : null;
  });
  if (!connected) fail('the call bar never said Connected: ' + (await page.textContent('#cb-state')));
  else step('the lead answered: ' + connected);
  await shot(page, 'connected');

  // Listen: the lead's audio keeps arriving, not silent.
  const end = Date.now() + cfg.listen_s * 1000;
  while (Date.now() < end) {
    const s = await audioStats(page);
    if (s) result.stats.push({ t: (Date.now() - t0) / 1000, ...s });
    await new Promise((r) => setTimeout(r, 500));
  }
  const withRx = result.stats.filter((s) => typeof s.packetsReceived === 'number');
  const first = withRx[0];
  const last = withRx[withRx.length - 1];
  if (!first || !(last.packetsReceived > first.packetsReceived + 50)) {
    fail('inbound-rtp packetsReceived did not rise: ' + JSON.stringify([first, last]));
  }
  const loudest = Math.max(0, ...withRx.map((s) => s.audioLevel || 0));
  result.max_audio_level = loudest;
  if (!(loudest > 0.01)) fail('the lead was not heard: audioLevel at most ' + loudest);
  const sent = result.stats.filter((s) => typeof s.packetsSent === 'number');
  if (!(sent.length && sent[sent.length - 1].packetsSent > sent[0].packetsSent + 50)) {
    fail('outbound-rtp packetsSent did not rise');
  }
  step(`heard the lead: packetsReceived ${first && first.packetsReceived} → ${last && last.packetsReceived}, max audioLevel ${loudest}`);

  // Mute, then hang the phone up from the console.
  await page.getByRole('button', { name: 'Mute' }).click();
  const muted = await page.evaluate(() => window.powerdialPhone.mic.getAudioTracks()[0].enabled === false);
  if (!muted) fail('Mute did not mute the microphone track');
  await page.getByRole('button', { name: 'Stop using this browser' }).click();
  const off = await until(5000, async () =>
    ((await page.textContent('#phone-status')) || '').includes('no longer your phone'),
  );
  if (!off) fail('stopping the browser phone said nothing');
  result.location_after_stop = await page.evaluate(() => window.powerdialPhone.location);
  await shot(page, 'stopped');

  // A browser whose microphone is refused says so in words.
  // A second Chromium without --use-fake-ui-for-media-stream: its
  // permission prompt is dismissed (headless), so getUserMedia is refused.
  const browser2 = await chromium.launch({
    executablePath: cfg.chromium || '/usr/bin/chromium',
    headless: true,
    args: args.filter((a) => a !== '--use-fake-ui-for-media-stream'),
  });
  const denied = await browser2.newContext({ viewport: { width: 1280, height: 800 } });
  const p2 = await denied.newPage();
  await p2.goto(cfg.url);
  await p2.getByLabel('Admin or agent token').fill(cfg.agent_token);
  await p2.getByRole('button', { name: 'Sign in' }).click();
  await p2.getByRole('button', { name: 'Sign out' }).waitFor({ timeout: 10000 });
  await p2.getByRole('button', { name: 'Use this browser as my phone' }).click();
  const refusedText = await until(5000, async () => {
    const t = (await p2.textContent('#phone-status')) || '';
    return t.includes('microphone was refused') ? t : null;
  });
  if (!refusedText) fail('a refused microphone gave no clear message: ' + (await p2.textContent('#phone-status')));
  else step('refused microphone: ' + refusedText.trim());
  await shot(p2, 'mic-refused');
  await browser2.close();

  // No UDP path to powerdial: the answer's candidate is rewritten on its
  // way to the page to a loopback port nothing listens on, so every ICE
  // check goes unanswered, as behind a firewall that drops UDP.
  const p3 = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  await p3.route('**/webrtc', async (route) => {
    const resp = await route.fetch();
    const body = (await resp.text()).replace(/(a=candidate:\S+ 1 udp \d+ \S+ )(\d+)/g, (_, pre) => pre + '9');
    await route.fulfill({ response: resp, body });
  });
  await p3.goto(cfg.url);
  await p3.getByLabel('Admin or agent token').fill(cfg.agent_token);
  await p3.getByRole('button', { name: 'Sign in' }).click();
  await p3.getByRole('button', { name: 'Sign out' }).waitFor({ timeout: 10000 });
  await p3.getByRole('button', { name: 'Use this browser as my phone' }).click();
  const blocked = await until(25000, async () => {
    const t = (await p3.textContent('#phone-status')) || '';
    return t.includes('block UDP') || t.includes('is alice') ? t : null;
  });
  if (!blocked || !blocked.includes('block UDP')) fail('no UDP path was not said in words: ' + blocked);
  else step('no UDP path: ' + blocked.trim());
  await shot(p3, 'udp-blocked');

  if (result.page_errors.length) fail('page errors: ' + result.page_errors.join('; '));
  result.ok = result.failures.length === 0;
} catch (e) {
  fail('script error: ' + (e && e.stack ? e.stack : e));
} finally {
  if (browser) await browser.close().catch(() => {});
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(result.ok ? 0 : 1);
}
