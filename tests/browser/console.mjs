// Drives powerdial's console (GET /) in headless Chromium with
// playwright-core, as an agent and an admin would (SPEC §1 flow, §4).
// Run by tests/e2e/console.rs, which starts powerdial, the PJSIP agent
// phone and the scripted carrier and creates the session; this script only
// clicks and reads what a person would see.
//
// Input: one JSON argument {url, token, session_id, agent, first_lead,
// next_lead, queued_lead, wrap_up_idle_s, shots_dir, chromium,
// playwright}. Output: one JSON line on stdout {ok, failures, ...};
// exit status 0 only when every check passed.

import { createRequire } from 'node:module';
import path from 'node:path';
import fs from 'node:fs';

const cfg = JSON.parse(process.argv[2] || '{}');
const require = createRequire(path.join(cfg.playwright || process.cwd(), 'noop.js'));
const { chromium } = require('playwright-core');

const result = {
  ok: false,
  failures: [],
  steps: [],
  agent_states: [],
  admin_states: [],
  queue_at_start: [],
  typed: '',
  screenshots: [],
  page_errors: [],
};
const t0 = Date.now();
const step = (s) => result.steps.push(`${((Date.now() - t0) / 1000).toFixed(1)}s ${s}`);
const fail = (s) => {
  result.failures.push(s);
  step('FAILED: ' + s);
};

async function shot(page, name) {
  const file = path.join(cfg.shots_dir, `console-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  result.screenshots.push(file);
}

async function signIn(page, hash) {
  await page.goto(cfg.url + hash);
  await page.getByLabel('Admin token').fill(cfg.token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('button', { name: 'Sign out' }).waitFor({ timeout: 10000 });
}

/** Polls `fn` every 100 ms until it returns a truthy value or `ms` pass. */
async function until(ms, fn) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) return null;
    await new Promise((r) => setTimeout(r, 100));
  }
}

const callbar = async (page) => ({
  state: ((await page.textContent('#cb-state')) || '').trim(),
  name: ((await page.textContent('#cb-lead-name')) || '').trim(),
  number: ((await page.textContent('#cb-lead-number')) || '').trim(),
});

let browser;
try {
  fs.mkdirSync(cfg.shots_dir, { recursive: true });
  browser = await chromium.launch({
    executablePath: cfg.chromium || '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
    ],
  });
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });

  // ---- Sign-in refuses a wrong token with a message a person understands.
  const admin = await ctx.newPage();
  admin.on('pageerror', (e) => result.page_errors.push('admin: ' + e.message));
  await admin.goto(cfg.url + '#admin');
  await admin.getByLabel('Admin token').fill('not-the-token');
  await admin.getByRole('button', { name: 'Sign in' }).click();
  const refused = await until(5000, async () =>
    ((await admin.textContent('#signin-error')) || '').includes('not this server'),
  );
  if (!refused) fail('a wrong token gave no clear message');
  await shot(admin, 'signin-refused');

  // ---- Admin view: the session's agents, counts and queue, live.
  await admin.getByLabel('Admin token').fill(cfg.token);
  await admin.getByRole('button', { name: 'Sign in' }).click();
  await admin.getByRole('button', { name: 'Sign out' }).waitFor({ timeout: 10000 });
  await admin.locator('#admin-view').getByLabel('Session', { exact: true }).selectOption(String(cfg.session_id));
  await admin.locator('#queue-table tbody tr').first().waitFor({ timeout: 10000 });
  result.queue_at_start = await admin.$$eval('#queue-table tbody tr', (rows) =>
    rows.map((r) => [...r.cells].map((c) => c.textContent.trim())),
  );
  step('admin view shows the queue');
  // Record every state the admin sees for the agent, as it changes.
  await admin.evaluate((agent) => {
    window.__states = [];
    const seen = () => {
      const cell = document.querySelector(`#agents-table tr[data-agent="${agent}"] .state`);
      const lead = document.querySelector(`#agents-table tr[data-agent="${agent}"] .lead`);
      const s = cell ? cell.textContent.trim() : '';
      const l = lead ? lead.textContent.trim() : '';
      const last = window.__states[window.__states.length - 1];
      if (s && (!last || last.state !== s || last.lead !== l)) window.__states.push({ state: s, lead: l });
    };
    new MutationObserver(seen).observe(document.querySelector('#agents-table tbody'), {
      subtree: true,
      childList: true,
      characterData: true,
    });
  }, cfg.agent);
  await shot(admin, 'admin-before');

  // ---- Agent view: join, see the lead in the call bar.
  const page = await ctx.newPage();
  page.on('pageerror', (e) => result.page_errors.push('agent: ' + e.message));
  // The agent's commands as the browser sent them (for failure reports).
  result.commands = [];
  page.on('request', (r) => {
    if (r.method() === 'POST' && /\/agents\/[^/]+\/(pause|resume|next|hangup)(\?|$)/.test(r.url())) {
      result.commands.push(`${((Date.now() - t0) / 1000).toFixed(2)}s ${r.url().split('/').pop()}`);
    }
  });
  await signIn(page, '#agent');
  const agentView = page.locator('#agent-view');
  await agentView.getByLabel('Session', { exact: true }).selectOption(String(cfg.session_id));
  await agentView.getByLabel('Agent', { exact: true }).selectOption(cfg.agent);
  await page.getByRole('button', { name: 'Join' }).click();
  step('joined');
  const connected = await until(30000, async () => {
    const cb = await callbar(page);
    return cb.state === 'Connected' && cb.name === cfg.first_lead ? cb : null;
  });
  if (!connected) {
    const cb = await callbar(page);
    fail(`the call bar never showed "${cfg.first_lead}" connected (it shows ${JSON.stringify(cb)})`);
    throw new Error('stop');
  }
  result.first_number = connected.number;
  step(`call bar: Connected with ${connected.name} ${connected.number}`);
  await shot(page, 'agent-connected');

  // ---- Notes: type through the lead's hang-up; the dialer must wait.
  const note =
    'Spoke with the CFO. Interested in the annual plan; wants a demo next Tuesday at 10. ' +
    'Send the pricing sheet and the security questionnaire before then. Budget approved for Q1.';
  await page.getByLabel(/Call notes/).click();
  let wrapSince = null;
  let wrapLeft = null;
  const needWrapMs = Math.max(3000, cfg.wrap_up_idle_s * 3000);
  for (const ch of note) {
    await page.keyboard.type(ch);
    await new Promise((r) => setTimeout(r, 60));
    const cb = await callbar(page);
    const last = result.agent_states[result.agent_states.length - 1];
    if (!last || last.state !== cb.state || last.name !== cb.name) {
      result.agent_states.push({ t: (Date.now() - t0) / 1000, state: cb.state, name: cb.name });
    }
    if (cb.state === 'Wrap-up' && wrapSince === null) {
      wrapSince = Date.now();
      step('lead hung up: Wrap-up while typing');
      await shot(page, 'agent-wrapup-typing');
    }
    if (wrapSince !== null && (cb.state !== 'Wrap-up' || cb.name !== cfg.first_lead)) {
      wrapLeft = cb;
      break;
    }
    if (wrapSince !== null && Date.now() - wrapSince >= needWrapMs) break;
  }
  result.typed = await page.inputValue('#notes');
  if (wrapSince === null) fail('the lead never hung up while the note was typed (no Wrap-up seen)');
  else if (wrapLeft) {
    fail(
      `the dialer moved on while the agent was typing: after ${Date.now() - wrapSince} ms of Wrap-up the call bar showed ${JSON.stringify(wrapLeft)}`,
    );
  } else {
    step(`stayed in Wrap-up for ${Date.now() - wrapSince} ms of typing (wrap_up_idle ${cfg.wrap_up_idle_s} s)`);
  }
  const saved = await until(5000, async () =>
    ((await page.textContent('#notes-status')) || '').startsWith('Saved'),
  );
  if (!saved) fail('the note was never shown as saved: ' + (await page.textContent('#notes-status')));
  await shot(page, 'agent-notes-saved');

  // ---- Call next lead: the next lead appears in the call bar.
  const stillWrap = await callbar(page);
  if (stillWrap.state !== 'Wrap-up') fail(`before "Call next lead" the state was ${stillWrap.state}`);
  // The agent ends the note and clicks at once, as people do: the last
  // keystroke's heartbeat keeps wrap-up while the click travels. (A click
  // that crossed the end of wrap-up would get a 409 instead: the console
  // names the call on screen, `next?call_id=`.)
  await page.locator('#notes').press('End');
  await page.keyboard.type('.');
  result.typed = await page.inputValue('#notes');
  await page.getByRole('button', { name: 'Call next lead' }).click();
  step('clicked Call next lead');
  const named = await until(5000, async () => result.commands.some((c) => /next\?call_id=\d+$/.test(c)));
  if (!named) {
    fail('"Call next lead" did not name the call on screen: ' + JSON.stringify(result.commands));
  }
  const next = await until(30000, async () => {
    const cb = await callbar(page);
    return cb.name === cfg.next_lead && ['Dialing', 'Ringing', 'Connected'].includes(cb.state) ? cb : null;
  });
  if (!next) fail(`the call bar never showed the next lead "${cfg.next_lead}": ${JSON.stringify(await callbar(page))}`);
  else step(`call bar: ${next.state} with ${next.name} ${next.number}`);
  const notesNow = await page.inputValue('#notes');
  if (notesNow !== '') fail('the notes box still holds the previous call\'s note after moving on');
  await until(10000, async () => (await callbar(page)).state === 'Connected');
  await shot(page, 'agent-next-lead');

  // ---- Pause and resume from the call bar.
  // (Pausing while connected lets the call go on; the dialer stops after it.)
  await page.getByRole('button', { name: 'Pause' }).click();
  const pending = await until(5000, async () =>
    ((await page.textContent('#cb-pending')) || '').includes('after this call'),
  );
  if (!pending && (await callbar(page)).state === 'Connected') fail('Pause during a call said nothing');
  const paused = await until(15000, async () => (await callbar(page)).state === 'Paused');
  if (!paused) fail(`Pause did not show "Paused": ${JSON.stringify(await callbar(page))}`);
  else {
    step('Paused');
    // The last call's notes stay open while paused (help page: pause, then
    // finish notes and update the lead).
    const label = (await page.textContent('#notes-label')) || '';
    if (!(await page.isEnabled('#notes')) || !label.includes(cfg.next_lead)) {
      fail(`paused after ${cfg.next_lead}'s call, the notes box is closed or about someone else: ${label}`);
    }
    await shot(page, 'agent-paused');
    await page.getByRole('button', { name: 'Resume' }).click();
    const resumed = await until(15000, async () => (await callbar(page)).state !== 'Paused');
    if (!resumed) fail('Resume left the call bar on Paused');
    else step('resumed: ' + (await callbar(page)).state);
  }

  // ---- The admin view followed the agent live.
  await new Promise((r) => setTimeout(r, 500));
  result.admin_states = await admin.evaluate(() => window.__states);
  await shot(admin, 'admin-after');
  const seq = result.admin_states.map((s) => s.state);
  const iConn = seq.indexOf('Connected');
  const iWrap = seq.indexOf('Wrap-up', iConn + 1);
  const iAfter = seq.findIndex((s, i) => i > iWrap && ['Dialing', 'Ringing', 'Connected'].includes(s));
  if (iConn < 0 || iWrap < 0 || iAfter < 0) {
    fail('the admin view did not follow Connected → Wrap-up → the next call live: ' + JSON.stringify(seq));
  }
  if (!result.admin_states.some((s) => s.state === 'Connected' && s.lead.includes(cfg.first_lead))) {
    fail(`the admin view never showed ${cfg.first_lead} beside the agent: ${JSON.stringify(result.admin_states)}`);
  }
  if (!seq.includes('Paused')) fail('the admin view never showed the agent Paused: ' + JSON.stringify(seq));

  // ---- The stream drops (powerdial restarts): a banner says so, the page
  // reconnects by itself and re-reads the agent's state.
  if (cfg.restart_request) {
    fs.writeFileSync(cfg.restart_request, 'restart');
    const lost = await until(30000, async () =>
      ((await page.textContent('#banner')) || '').includes('interrupted'),
    );
    if (!lost) fail('no message when the event stream dropped');
    else {
      step('stream lost: ' + (await page.textContent('#banner')));
      await shot(page, 'agent-stream-lost');
    }
    const back = await until(45000, async () => {
      const live = ((await page.textContent('#stream-status')) || '').trim() === 'Live';
      return live && (await page.isHidden('#banner'));
    });
    if (!back) fail('the page did not reconnect to the event stream');
    else step('stream back');
    // The call bar agrees with the server once reconnected.
    const words = { paused: 'Paused', ready: 'Finding the next lead…', calling_agent: 'Calling your phone…' };
    const agrees = await until(10000, async () => {
      const api = await page.evaluate(
        async ([sid, token]) => {
          const r = await fetch(`/api/v1/sessions/${sid}`, { headers: { Authorization: 'Bearer ' + token } });
          return r.json();
        },
        [cfg.session_id, cfg.token],
      );
      const a = (api.agents || []).find((x) => x.agent === cfg.agent);
      const want = a ? words[a.state] || a.state : 'Left the session';
      return (await callbar(page)).state === want ? want : null;
    });
    if (!agrees) fail('after reconnecting the call bar disagrees with the server: ' + JSON.stringify(await callbar(page)));
    else step('after the restart the call bar shows ' + agrees);
    await shot(page, 'agent-reconnected');
  }
  if (result.page_errors.length) fail('script errors in the page: ' + result.page_errors.join('; '));
} catch (e) {
  if (e.message !== 'stop') fail('script error: ' + (e.stack || e.message));
  // What each page knew of the live stream when it failed.
  for (const p of browser ? browser.contexts().flatMap((c) => c.pages()) : []) {
    try {
      result.steps.push(
        'page ' + p.url() + ': ' +
          JSON.stringify(
            await p.evaluate(() => ({
              stream: document.getElementById('stream-status').textContent,
              banner: document.getElementById('banner').textContent,
              events: document.body.dataset.events || '0',
              visibility: document.visibilityState,
            })),
          ),
      );
      await shot(p, 'failed-' + (p.url().includes('#admin') ? 'admin' : 'agent'));
    } catch (_) {
      // The page is gone: nothing more to show.
    }
  }
} finally {
  if (browser) await browser.close().catch(() => {});
}
result.ok = result.failures.length === 0;
process.stdout.write(JSON.stringify(result) + '\n');
process.exit(result.ok ? 0 : 1);
