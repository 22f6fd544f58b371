// powerdial console (SPEC §1, §4 "GET /"): the agent's call bar, lead
// details and notes box, and the admin's live view of sessions and agents.
// Plain JavaScript, no build step. Every API call carries the token the
// user signed in with (kept in this tab's sessionStorage): the admin token,
// an agent token, or the agent token a share link (`/#join=TOKEN`) was
// exchanged for. An agent sees only their own controls. Live updates come
// from GET /api/v1/events, read with fetch() because EventSource cannot
// send the Authorization header.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = 'powerdial.token';
  const AGENT_KEY = 'powerdial.agent';
  // {role: 'admin'} or {role: 'agent', agent} (GET /api/v1/me).
  const ME_KEY = 'powerdial.me';
  // Share links this tab knows, by session id (R16: the server keeps only
  // their hashes, so a link is shown only where it was created or opened).
  const SHARE_KEY = 'powerdial.share';

  /** An agent's state in words (SPEC §1 flow). */
  const STATE_WORDS = {
    joining: 'Joining…',
    calling_agent: 'Calling your phone…',
    ready: 'Finding the next lead…',
    dialing: 'Dialing',
    ringing: 'Ringing',
    connected: 'Connected',
    wrap_up: 'Wrap-up',
    paused: 'Paused',
    left: 'Left the session',
  };
  /** States in which the call bar names the lead. */
  const WITH_LEAD = new Set(['dialing', 'ringing', 'connected', 'wrap_up']);

  let token = sessionStorage.getItem(TOKEN_KEY) || '';
  let who = JSON.parse(sessionStorage.getItem(ME_KEY) || 'null');
  const isAgent = () => !!who && who.role === 'agent';

  function refusedMessage() {
    return isAgent()
      ? 'Your agent token was refused (revoked, or the agent deleted): sign in again or open the share link again.'
      : 'The admin token was refused: sign in again.';
  }

  function shareLinks() {
    return JSON.parse(sessionStorage.getItem(SHARE_KEY) || '{}');
  }
  function rememberShareLink(sessionId, shareToken) {
    const all = shareLinks();
    all[sessionId] = shareToken;
    sessionStorage.setItem(SHARE_KEY, JSON.stringify(all));
  }
  function shareUrl(shareToken) {
    return `${location.origin}/#join=${encodeURIComponent(shareToken)}`;
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  /** One API request with the token; JSON in and out; 204 gives null. */
  async function api(method, path, body, opts = {}) {
    const headers = opts.noAuth ? {} : { Authorization: 'Bearer ' + token };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let res;
    try {
      res = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store',
        keepalive: !!opts.keepalive,
      });
    } catch (e) {
      throw new ApiError(0, 'network', 'powerdial cannot be reached (' + e.message + ')');
    }
    if (res.status === 401 && !opts.signingIn && !opts.noAuth) {
      signOut(refusedMessage());
    }
    if (res.status === 204) return null;
    let data = null;
    try {
      data = await res.json();
    } catch (_) {
      data = null;
    }
    if (!res.ok) {
      const err = (data && data.error) || {};
      let message = err.message || res.statusText;
      // 403: an agent token used for something only the admin (or another
      // agent) may do; said plainly rather than as a failure.
      if (res.status === 403) {
        message = isAgent()
          ? `Not allowed for agent ${who.agent}: this needs the admin token.`
          : 'Not allowed: ' + message;
      }
      throw new ApiError(res.status, err.code || 'http_' + res.status, message);
    }
    return data;
  }

  const leadCache = new Map();
  /** A lead's name and the number the dialer calls (R2: first phone of the first contact). */
  function lead(id) {
    if (!leadCache.has(id)) {
      const p = api('GET', '/api/v1/leads/' + id).then((l) => {
        const phones = (l.contacts || []).flatMap((c) => c.phones || []);
        return { name: l.name, number: phones[0] || '' };
      });
      p.catch(() => leadCache.delete(id));
      leadCache.set(id, p);
    }
    return leadCache.get(id);
  }

  /** A lead with its notes and its latest calls, read fresh. */
  async function leadDetail(id) {
    const [l, calls] = await Promise.all([
      api('GET', '/api/v1/leads/' + id),
      api('GET', `/api/v1/leads/${id}/calls?limit=5`),
    ]);
    return { lead: l, calls: calls.data };
  }

  const OUTCOME_WORDS = {
    answered: 'Answered',
    no_answer: 'No answer',
    busy: 'Busy',
    skipped: 'Skipped',
    temporary_error: 'Temporary error',
    restricted: 'Restricted',
    in_progress: 'In progress',
  };

  function fmtWhen(iso) {
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return iso || '';
    const sameDay = d.toDateString() === new Date().toDateString();
    return sameDay
      ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
      : d.toLocaleDateString([], { month: 'short', day: 'numeric' }) +
          ' ' +
          d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }

  function fmtDuration(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    const m = Math.floor(s / 60);
    const h = Math.floor(m / 60);
    const pad = (n) => String(n).padStart(2, '0');
    return h > 0 ? `${h}:${pad(m % 60)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
  }

  function setText(el, text) {
    if (el.textContent !== text) el.textContent = text;
  }

  // ------------------------------------------------------------ sign-in

  function showSignedIn(on) {
    $('signin').hidden = on;
    $('share-join').hidden = true;
    $('nav').hidden = !on || isAgent();
    $('signout').hidden = !on;
    document.body.dataset.role = on && who ? who.role : '';
    setText($('whoami'), on && who ? (isAgent() ? `Agent ${who.agent}` : 'Admin') : '');
    if (!on) {
      $('agent-view').hidden = true;
      $('admin-view').hidden = true;
      $('stream-status').textContent = '';
      $('stream-status').className = 'stream';
    }
  }

  function signOut(message) {
    // The browser phone hangs up with the token that opened it.
    phoneTeardown();
    phoneRelease(true);
    token = '';
    who = null;
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(ME_KEY);
    sessionStorage.removeItem(AGENT_KEY);
    me.sessionId = null;
    me.name = null;
    stream.stop();
    banner('');
    notice('');
    showSignedIn(false);
    $('signin-error').textContent = message || '';
    $('token').focus();
  }

  function signedIn(t, whoami) {
    token = t;
    who = whoami;
    sessionStorage.setItem(TOKEN_KEY, t);
    sessionStorage.setItem(ME_KEY, JSON.stringify(whoami));
  }

  $('signin-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const t = $('token').value.trim();
    if (!t) return;
    token = t;
    $('signin-error').textContent = '';
    let whoami;
    try {
      whoami = await api('GET', '/api/v1/me', undefined, { signingIn: true });
    } catch (e) {
      token = '';
      $('signin-error').textContent =
        e.status === 401
          ? 'That is not this server’s admin token, nor an agent token. Check it and try again.'
          : e.status === 429
            ? 'Too many failed sign-ins from here: wait a minute before trying again.'
            : 'Could not sign in: ' + e.message;
      return;
    }
    // Another token's agent and session are not this one's.
    if (!who || who.role !== whoami.role || who.agent !== whoami.agent) sessionStorage.removeItem(AGENT_KEY);
    signedIn(t, whoami);
    $('token').value = '';
    start();
  });

  $('signout').addEventListener('click', () => signOut(''));

  // ---------------------------------------------------- share link (R16)

  /** The share token of a `#join=TOKEN` address, if this is one. */
  function shareTokenInHash() {
    const m = /^#join=([^&]+)$/.exec(location.hash);
    if (!m) return null;
    try {
      return decodeURIComponent(m[1]);
    } catch (_) {
      return null;
    }
  }

  function showShareJoin() {
    $('signin').hidden = true;
    $('agent-view').hidden = true;
    $('admin-view').hidden = true;
    $('share-join').hidden = false;
    $('share-error').textContent = '';
    if (isAgent() && who.agent) $('share-agent').value = who.agent;
    $('share-agent').focus();
  }

  $('share-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const shareToken = shareTokenInHash();
    const agent = $('share-agent').value.trim();
    if (!shareToken || !agent) return;
    $('share-error').textContent = '';
    let joined;
    try {
      // The share link is the credential here; it is exchanged once for an
      // agent token, which this tab keeps (SPEC §4).
      joined = await api('POST', '/api/v1/sessions/join', { token: shareToken, agent }, { noAuth: true });
    } catch (e) {
      $('share-error').textContent =
        e.status === 401
          ? 'This share link does not work any more: it was revoked or replaced by a newer one. Ask for the current link.'
          : e.status === 404
            ? `There is no agent “${agent}” on this server. Check your username with your admin.`
            : e.status === 429
              ? 'Too many failed attempts from here: wait a minute.'
              : 'Could not join: ' + e.message;
      return;
    }
    signedIn(joined.agent_token, { role: 'agent', agent: joined.agent });
    rememberShareLink(joined.session_id, shareToken);
    sessionStorage.setItem(AGENT_KEY, JSON.stringify({ sessionId: joined.session_id, name: joined.agent }));
    // The link leaves the address bar: a reload uses the agent token.
    history.replaceState(null, '', location.pathname + '#agent');
    start();
  });

  function banner(text) {
    $('banner').hidden = !text;
    $('banner').textContent = text;
  }

  /** A refusal the user should read (e.g. the admin view for an agent). */
  function notice(text) {
    $('notice').hidden = !text;
    $('notice').textContent = text;
  }

  // ------------------------------------------------------- event stream

  /**
   * The live event stream: reconnects with a growing delay (1 s … 10 s),
   * says so in a banner while it is down, and asks the views to re-read
   * their state after each (re)connection, since events may have been
   * missed meanwhile. A silent connection (no keep-alive for 45 s) counts
   * as dropped.
   */
  const stream = (() => {
    let ctl = null;
    let running = false;
    let attempt = 0;
    let everUp = false;
    const handlers = [];

    function status(up) {
      const el = $('stream-status');
      el.className = 'stream ' + (up ? 'live' : 'down');
      el.textContent = up ? 'Live' : 'Reconnecting…';
      if (up) banner('');
      else if (everUp) banner('Live updates were interrupted. Reconnecting… (what you see may be out of date)');
    }

    function dispatch(block) {
      let event = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) continue;
        const i = line.indexOf(':');
        const field = i < 0 ? line : line.slice(0, i);
        let value = i < 0 ? '' : line.slice(i + 1);
        if (value.startsWith(' ')) value = value.slice(1);
        if (field === 'event') event = value;
        else if (field === 'data') data.push(value);
      }
      if (event === 'lagged') {
        for (const h of handlers) h.resync();
        return;
      }
      if (event !== 'state' || data.length === 0) return;
      // How many state events this page has had (shown to tests and to
      // anyone debugging a silent stream).
      document.body.dataset.events = String(Number(document.body.dataset.events || 0) + 1);
      let msg;
      try {
        msg = JSON.parse(data.join('\n'));
      } catch (_) {
        return;
      }
      for (const h of handlers) h.event(msg);
    }

    async function loop() {
      while (running) {
        const c = new AbortController();
        ctl = c;
        let watchdog = null;
        const arm = () => {
          clearTimeout(watchdog);
          watchdog = setTimeout(() => c.abort(), 45000);
        };
        try {
          const res = await fetch('/api/v1/events', {
            headers: { Authorization: 'Bearer ' + token, Accept: 'text/event-stream' },
            cache: 'no-store',
            signal: c.signal,
          });
          if (res.status === 401) {
            signOut(refusedMessage());
            return;
          }
          if (!res.ok || !res.body) throw new Error('HTTP ' + res.status);
          attempt = 0;
          everUp = true;
          status(true);
          for (const h of handlers) h.resync();
          arm();
          const reader = res.body.getReader();
          const dec = new TextDecoder();
          let buf = '';
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            arm();
            buf += dec.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
            let i;
            while ((i = buf.indexOf('\n\n')) >= 0) {
              const block = buf.slice(0, i);
              buf = buf.slice(i + 2);
              dispatch(block);
            }
          }
        } catch (_) {
          // Dropped, refused or aborted: retried below while running.
        } finally {
          clearTimeout(watchdog);
        }
        if (!running) return;
        status(false);
        const delay = Math.min(10000, 1000 * 2 ** attempt);
        attempt += 1;
        await new Promise((r) => setTimeout(r, delay));
      }
    }

    return {
      on(h) {
        handlers.push(h);
      },
      start() {
        if (running) return;
        running = true;
        attempt = 0;
        loop();
      },
      stop() {
        running = false;
        everUp = false;
        if (ctl) ctl.abort();
      },
    };
  })();

  // ------------------------------------------------------------- lists

  async function fillSessions(select, keep) {
    const list = await api('GET', '/api/v1/sessions');
    const prev = keep || select.value;
    select.textContent = '';
    if (list.data.length === 0) {
      const o = new Option('No session yet: create one with POST /api/v1/sessions', '');
      o.disabled = true;
      select.add(o);
      select.value = '';
      return;
    }
    for (const s of list.data) {
      const view = s.smart_view_name ? ` — ${s.smart_view_name}` : '';
      const done = s.state === 'done' ? ' (all answered)' : '';
      select.add(new Option(`Session ${s.id}${view}${done}`, String(s.id)));
    }
    if (prev && [...select.options].some((o) => o.value === String(prev))) select.value = String(prev);
  }

  async function fillAgents(select, keep) {
    if (isAgent()) {
      // An agent acts for themself only (GET /api/v1/agents is the admin's).
      select.textContent = '';
      select.add(new Option(who.agent, who.agent));
      setText($('agent-self'), 'as ' + who.agent);
      return;
    }
    const list = await api('GET', '/api/v1/agents');
    const prev = keep || select.value;
    select.textContent = '';
    for (const a of list.data) {
      const name = a.display_name ? `${a.display_name} (${a.username})` : a.username;
      const reg = a.registered ? '' : ' — phone not registered';
      select.add(new Option(name + reg, a.username));
    }
    if (prev && [...select.options].some((o) => o.value === prev)) select.value = prev;
  }

  // -------------------------------------------------------- agent view

  const me = {
    sessionId: null,
    name: null,
    state: null,
    leadId: null,
    callId: null,
    since: Date.now(),
    wrapUpIdleS: null,
    sessionDone: false,
    // Pause asked during a call: the dialer pauses once it ends (R14).
    pauseAfterCall: false,
    // Agent-state events applied so far: a snapshot read while one
    // arrived may be older than it and is not applied.
    eventSeq: 0,
  };

  const notes = {
    callId: null,
    dirty: false,
    lastTyping: 0,
    // The pending trailing heartbeat (typingHeartbeat).
    trailing: null,
    saveTimer: null,
  };

  function typingInterval() {
    // Heartbeats well inside the session's wrap-up idle time so the dialer
    // never moves on between two of them (SPEC §1 step 5).
    const idle = me.wrapUpIdleS;
    if (typeof idle !== 'number' || !(idle > 0)) return 1000;
    return Math.max(200, Math.min(1000, (idle * 1000) / 3));
  }

  async function loadMySession() {
    if (me.sessionId == null) return;
    const seq = me.eventSeq;
    const s = await api('GET', `/api/v1/sessions/${me.sessionId}`);
    applySnapshot(s, seq);
  }

  /** A session view read when `seq` events had been applied. */
  function applySnapshot(s, seq) {
    me.wrapUpIdleS = s.wrap_up_idle;
    me.sessionDone = s.state === 'done';
    if (me.eventSeq !== seq) {
      renderCallbar();
      return;
    }
    const a = (s.agents || []).find((x) => x.agent === me.name);
    if (a) applyMyState(a.state, a.lead_id, a.call_id);
    else applyMyState('left', null, null);
  }

  function applyMyState(state, leadId, callId) {
    const prevState = me.state;
    if (state !== me.state) me.since = Date.now();
    if (!['dialing', 'ringing', 'connected'].includes(state)) me.pauseAfterCall = false;
    me.state = state;
    me.leadId = leadId == null ? null : leadId;
    // The notes box stays on the last call (in wrap-up, paused, idle) until
    // the next call starts: notes may be finished at any time.
    if (callId != null && callId !== notes.callId) switchNotes(callId);
    me.callId = callId == null ? null : callId;
    renderCallbar();
    // The lead panel follows the lead on the call bar, and stays on the
    // last one while paused (its notes may still be finished); at the end
    // of a call it is re-read for that call's outcome.
    const LIVE = ['dialing', 'ringing', 'connected'];
    if (me.leadId != null && me.leadId !== leadPanel.leadId) {
      loadLeadPanel(me.leadId);
    } else if (leadPanel.leadId != null && LIVE.includes(prevState) && !LIVE.includes(state)) {
      // The call ended: its outcome is stored just after the state
      // changes, so read the lead now and once more a moment later.
      const id = leadPanel.leadId;
      loadLeadPanel(id);
      setTimeout(() => {
        if (leadPanel.leadId === id) loadLeadPanel(id);
      }, 1500);
    }
  }

  // ------------------------------------------------------- lead panel

  const leadPanel = { leadId: null, loading: 0, notes: [] };

  async function loadLeadPanel(leadId) {
    const n = ++leadPanel.loading;
    leadPanel.leadId = leadId;
    try {
      const d = await leadDetail(leadId);
      if (n !== leadPanel.loading) return;
      renderLeadPanel(d);
    } catch (e) {
      if (n !== leadPanel.loading) return;
      $('lead-panel').hidden = false;
      setText($('lead-title'), `Lead ${leadId}`);
      setText($('lead-status'), 'Could not load the lead: ' + e.message);
    }
  }

  function renderLeadPanel({ lead: l, calls }) {
    $('lead-panel').hidden = false;
    $('lead-panel').dataset.lead = String(l.id);
    setText($('lead-title'), l.name);
    setText($('lead-status'), l.status || '—');
    const contacts = $('lead-contacts');
    contacts.textContent = '';
    (l.contacts || []).forEach((c, i) => {
      const li = el('li');
      li.append(el('span', 'contact-name', c.name || (i === 0 ? l.name : 'Contact ' + (i + 1))));
      const phones = (c.phones || []).map((p, j) => (i === 0 && j === 0 ? p + ' (dialed)' : p));
      if (phones.length) {
        li.append(document.createElement('br'));
        li.append(el('span', 'phones', phones.join(' · ')));
      }
      for (const e of c.emails || []) {
        li.append(document.createElement('br'));
        const a = el('a', 'email', e);
        a.href = 'mailto:' + e;
        li.append(a);
      }
      contacts.append(li);
    });
    if (!contacts.children.length) contacts.append(el('li', 'hint', 'No contacts.'));
    const custom = $('lead-custom');
    custom.textContent = '';
    for (const [k, v] of Object.entries(l.custom || {})) {
      const d = el('div');
      d.append(el('dt', null, k), el('dd', null, String(v)));
      custom.append(d);
    }
    $('lead-custom-empty').hidden = custom.children.length > 0;
    custom.hidden = custom.children.length === 0;
    const tbody = $('lead-calls').tBodies[0];
    tbody.textContent = '';
    for (const c of calls) {
      const tr = tbody.insertRow();
      tr.dataset.call = String(c.id);
      const now = c.id === me.callId && WITH_LEAD.has(me.state);
      tr.insertCell().textContent = fmtWhen(c.started_at) + (now ? ' (this call)' : '');
      tr.insertCell().textContent = OUTCOME_WORDS[c.outcome || 'in_progress'] || c.outcome;
      tr.insertCell().textContent = c.agent || '—';
    }
    $('lead-calls').hidden = calls.length === 0;
    $('lead-calls-empty').hidden = calls.length > 0;
    leadPanel.notes = l.notes || [];
    renderLeadNotes();
  }

  /** The lead's notes but the one open in the notes box. */
  function renderLeadNotes() {
    const ul = $('lead-notes');
    ul.textContent = '';
    for (const n of leadPanel.notes) {
      if (n.call_id != null && n.call_id === notes.callId) continue;
      const li = el('li');
      li.dataset.note = String(n.id);
      li.append(el('span', 'meta', `${fmtWhen(n.created)} · ${n.agent || 'admin'}`));
      li.append(document.createTextNode(n.body));
      ul.append(li);
    }
    $('lead-notes-empty').hidden = ul.children.length > 0;
  }

  async function renderCallbar() {
    $('callbar').hidden = me.sessionId == null;
    $('notes-panel').hidden = me.sessionId == null;
    $('shortcuts').hidden = me.sessionId == null;
    if (me.sessionId == null) {
      $('lead-panel').hidden = true;
      if (settingsSession() === me.sessionId) $('settings').hidden = true;
      leadPanel.leadId = null;
      return;
    }
    const st = me.state || 'joining';
    const pill = $('cb-state');
    setText(pill, STATE_WORDS[st] || st);
    pill.dataset.state = st;
    setText($('cb-who'), `Session ${me.sessionId} as ${me.name}` + (me.sessionDone ? ' — every lead in the view has answered.' : ''));
    const b = (id, on) => {
      $(id).disabled = !on;
    };
    b('btn-pause', !['paused', 'left'].includes(st));
    b('btn-resume', st === 'paused' || st === 'left');
    b('btn-hangup', ['dialing', 'ringing', 'connected'].includes(st));
    // SPEC §4 voicemail drop: on an answered lead only.
    b('btn-drop', st === 'connected');
    b('btn-dnc', ['connected', 'wrap_up'].includes(st) && me.leadId != null);
    b('btn-next', ['ready', 'dialing', 'ringing', 'connected', 'wrap_up', 'paused'].includes(st));
    setText($('cb-pending'), me.pauseAfterCall ? 'Pausing after this call' : '');
    tick();
    const leadId = me.leadId;
    if (!WITH_LEAD.has(st) || leadId == null) {
      setText($('cb-lead-name'), st === 'paused' ? 'Dialing is paused' : '');
      setText($('cb-lead-number'), '');
      return;
    }
    try {
      const l = await lead(leadId);
      if (me.leadId !== leadId) return;
      setText($('cb-lead-name'), l.name);
      setText($('cb-lead-number'), l.number);
      setText($('notes-label'), `Call notes — ${l.name}`);
    } catch (e) {
      if (me.leadId !== leadId) return;
      setText($('cb-lead-name'), `Lead ${leadId}`);
      setText($('cb-lead-number'), '');
    }
  }

  function tick() {
    const t = me.sessionId == null ? '' : fmtDuration(Date.now() - me.since);
    setText($('cb-timer'), t);
  }

  /** The notes box follows the current call: the old note is saved first. */
  function switchNotes(callId) {
    if (notes.dirty && notes.callId != null) saveNotes();
    notes.callId = callId;
    notes.dirty = false;
    clearTimeout(notes.saveTimer);
    const box = $('notes');
    box.value = '';
    box.disabled = callId == null;
    setText($('notes-label'), 'Call notes');
    setText($('notes-status'), '');
    renderLeadNotes();
    // A note saved earlier (from another tab, or before a reload) is shown,
    // so typing goes on from it instead of replacing it.
    if (callId != null) {
      api('GET', `/api/v1/calls/${callId}`)
        .then((c) => {
          if (notes.callId === callId && !notes.dirty && box.value === '' && c.notes) box.value = c.notes;
        })
        .catch(() => {});
    }
  }

  async function saveNotes() {
    clearTimeout(notes.saveTimer);
    if (!notes.dirty || notes.callId == null) return;
    const id = notes.callId;
    const text = $('notes').value;
    notes.dirty = false;
    setText($('notes-status'), 'Saving…');
    try {
      await api('PATCH', `/api/v1/calls/${id}`, { notes: text }, { keepalive: true });
      if (notes.callId === id && !notes.dirty) {
        setText($('notes-status'), 'Saved on the lead at ' + new Date().toLocaleTimeString());
      }
    } catch (e) {
      if (notes.callId === id) {
        notes.dirty = true;
        setText($('notes-status'), 'Not saved: ' + e.message);
      }
    }
  }

  /**
   * Tells the dialer the agent is typing, at most once per interval; a
   * keystroke inside the interval is reported at its end (trailing edge),
   * so the wrap-up idle time always counts from the last keystroke.
   */
  function typingHeartbeat() {
    if (me.sessionId == null || notes.trailing) return;
    const wait = notes.lastTyping + typingInterval() - Date.now();
    const send = () => {
      notes.trailing = null;
      notes.lastTyping = Date.now();
      if (me.sessionId == null) return;
      api('POST', `/api/v1/sessions/${me.sessionId}/agents/${encodeURIComponent(me.name)}/typing`).catch(() => {});
    };
    if (wait <= 0) send();
    else notes.trailing = setTimeout(send, wait);
  }

  $('notes').addEventListener('input', () => {
    if (notes.callId == null) return;
    notes.dirty = true;
    setText($('notes-status'), 'Typing… (the dialer waits while you type)');
    typingHeartbeat();
    clearTimeout(notes.saveTimer);
    notes.saveTimer = setTimeout(saveNotes, 800);
  });
  $('notes').addEventListener('blur', () => saveNotes());
  $('notes').addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      if (!$('btn-next').disabled) agentAction('next');
    }
  });
  window.addEventListener('pagehide', () => saveNotes());

  async function agentAction(action) {
    $('action-error').textContent = '';
    if (action === 'next' || action === 'hangup') await saveNotes();
    // "Call next lead" and "Hang up" name the call on screen, so a click
    // that crosses the dialer moving on by itself (wrap-up over) does not
    // skip or hang up the lead dialed meanwhile: the server answers 409.
    const onCall = WITH_LEAD.has(me.state) && me.callId != null;
    const q = (action === 'next' || action === 'hangup') && onCall ? `?call_id=${me.callId}` : '';
    try {
      await api('POST', `/api/v1/sessions/${me.sessionId}/agents/${encodeURIComponent(me.name)}/${action}${q}`);
      const inCall = ['dialing', 'ringing', 'connected'].includes(me.state);
      if (action === 'pause' && inCall) me.pauseAfterCall = true;
      if (action === 'resume' || action === 'next' || action === 'hangup') me.pauseAfterCall = false;
      renderCallbar();
    } catch (e) {
      $('action-error').textContent =
        e.status === 409 && q
          ? 'The dialer had already moved on to the next lead; nothing was skipped.'
          : e.message;
    }
  }
  $('btn-pause').addEventListener('click', () => agentAction('pause'));
  $('btn-resume').addEventListener('click', () => agentAction('resume'));
  $('btn-hangup').addEventListener('click', () => agentAction('hangup'));
  $('btn-drop').addEventListener('click', () => agentAction('drop'));
  $('btn-next').addEventListener('click', () => agentAction('next'));

  // "Do not call" (SPEC §4): the lead asked not to be called again. Two
  // clicks, like the reset, so a stray click lists nobody; the call goes on.
  let dncArmed = null;
  $('btn-dnc').addEventListener('click', async () => {
    const b = $('btn-dnc');
    setText($('action-status'), '');
    if (!dncArmed) {
      b.textContent = 'Click again: never call this number';
      b.classList.add('danger');
      dncArmed = setTimeout(() => {
        dncArmed = null;
        b.textContent = 'Do not call';
        b.classList.remove('danger');
      }, 5000);
      return;
    }
    clearTimeout(dncArmed);
    dncArmed = null;
    b.textContent = 'Do not call';
    b.classList.remove('danger');
    try {
      const r = await api('POST', `/api/v1/sessions/${me.sessionId}/agents/${encodeURIComponent(me.name)}/dnc`);
      setText($('action-status'), `${r.number || 'The number'} is on the do-not-call list: it will not be dialed again.`);
    } catch (e) {
      $('action-error').textContent = 'Not added to the do-not-call list: ' + e.message;
    }
  });

  // Keyboard shortcuts for the buttons pressed all day (shown beside them):
  // Alt+N call next lead, Alt+P pause, Alt+R resume, Alt+H hang up; they
  // work while typing notes too. `code`, not `key`: Alt changes the
  // character on some layouts.
  const SHORTCUTS = { KeyN: 'btn-next', KeyP: 'btn-pause', KeyR: 'btn-resume', KeyH: 'btn-hangup' };
  document.addEventListener('keydown', (ev) => {
    if (!ev.altKey || ev.ctrlKey || ev.metaKey || ev.shiftKey) return;
    const id = SHORTCUTS[ev.code];
    if (!id || $('agent-view').hidden || $('callbar').hidden) return;
    ev.preventDefault();
    const b = $(id);
    if (!b.disabled) b.click();
  });

  // ------------------------------------------- dialer settings (help page)

  $('btn-settings').addEventListener('click', () => {
    const open = $('settings').hidden;
    $('settings').hidden = !open;
    $('btn-settings').setAttribute('aria-expanded', String(open));
    setText($('settings-status'), '');
    if (open) renderSettings().catch((e) => setText($('settings-status'), e.message));
  });

  /** The session the settings panel is about: the admin view's, or the call bar's. */
  function settingsSession() {
    return $('settings').parentElement === $('admin-settings-slot') ? admin.sessionId : me.sessionId;
  }

  async function renderSettings() {
    const sid = settingsSession();
    if (sid == null) return;
    const s = await api('GET', `/api/v1/sessions/${sid}`);
    if (settingsSession() !== sid) return;
    $('set-reduced').checked = !!s.reduced_ring_time;
    setText(
      $('set-agent-summary'),
      `Reduced ring time is ${s.reduced_ring_time ? 'on' : 'off'} in this session (the admin sets it).`,
    );
    const link = shareLinks()[sid];
    $('share-link').value = link ? shareUrl(link) : '';
    $('btn-copy-link').disabled = !link;
    let hint;
    if (link) hint = 'Anyone with the link can join this session as an agent: paste it into an email or a chat to rally your team.';
    else if (isAgent()) hint = s.shared ? 'Ask your admin for this session’s share link.' : 'This session has no share link.';
    else if (s.shared) hint = 'The link was shown where it was made. “New link” makes another; the old one then stops working.';
    else hint = 'No share link yet: “New link” makes one.';
    setText($('share-hint'), hint);
  }

  $('set-reduced').addEventListener('change', async () => {
    const on = $('set-reduced').checked;
    try {
      await api('PATCH', `/api/v1/sessions/${settingsSession()}`, { reduced_ring_time: on });
      setText(
        $('settings-status'),
        on
          ? 'Reduced ring time on: leads ring for the shorter time (20 s by default) from the next call.'
          : 'Reduced ring time off: leads ring for the full time (32 s by default) from the next call.',
      );
    } catch (e) {
      $('set-reduced').checked = !on;
      setText($('settings-status'), 'Not changed: ' + e.message);
    }
  });

  $('btn-new-link').addEventListener('click', async () => {
    const sid = settingsSession();
    try {
      const r = await api('POST', `/api/v1/sessions/${sid}/share`);
      rememberShareLink(sid, r.share_token);
      await renderSettings();
      setText($('settings-status'), 'New share link made; any earlier link no longer works.');
    } catch (e) {
      setText($('settings-status'), 'No link made: ' + e.message);
    }
  });

  $('btn-copy-link').addEventListener('click', async () => {
    const text = $('share-link').value;
    if (!text) return;
    try {
      await navigator.clipboard.writeText(text);
    } catch (_) {
      // No clipboard API (an insecure origin): the selected text can be copied by hand.
      $('share-link').select();
      setText($('settings-status'), 'Press Ctrl+C to copy the selected link.');
      return;
    }
    setText($('settings-status'), 'Share link copied.');
  });

  // "Reset & call again" (R14) asks for a second click: it erases the
  // session's history for every agent in it.
  let resetArmed = null;
  $('btn-reset').addEventListener('click', async () => {
    const b = $('btn-reset');
    if (!resetArmed) {
      b.textContent = 'Click again to reset the session';
      b.classList.add('danger');
      resetArmed = setTimeout(() => {
        resetArmed = null;
        b.textContent = 'Reset & call again';
        b.classList.remove('danger');
      }, 5000);
      return;
    }
    clearTimeout(resetArmed);
    resetArmed = null;
    b.textContent = 'Reset & call again';
    b.classList.remove('danger');
    try {
      const sid = settingsSession();
      await api('POST', `/api/v1/sessions/${sid}/reset`);
      setText($('settings-status'), 'The session starts again from the top of the view.');
      if (sid === me.sessionId && (me.state === 'paused' || me.state === 'left')) await agentAction('resume');
    } catch (e) {
      setText($('settings-status'), 'Not reset: ' + e.message);
    }
  });

  $('join-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    $('join-error').textContent = '';
    const sid = $('agent-session').value;
    const name = isAgent() ? who.agent : $('agent-name').value;
    if (!sid || !name) {
      $('join-error').textContent = 'Pick a session and an agent first.';
      return;
    }
    // Events are taken from now on: the phone may answer and the first
    // lead be dialed before the join's answer arrives.
    const prev = { sessionId: me.sessionId, name: me.name };
    me.sessionId = Number(sid);
    me.name = name;
    const seq = me.eventSeq;
    try {
      const s = await api('POST', `/api/v1/sessions/${sid}/agents`, { agent: name });
      if (notes.callId == null) setText($('notes-status'), 'The notes box opens with your first call.');
      sessionStorage.setItem(AGENT_KEY, JSON.stringify({ sessionId: me.sessionId, name }));
      applySnapshot(s, seq);
    } catch (e) {
      me.sessionId = prev.sessionId;
      me.name = prev.name;
      $('join-error').textContent = 'Could not join: ' + e.message;
    }
  });

  $('agent-reload').addEventListener('click', () => loadAgentLists().catch(showAgentError));

  // ------------------------------------------------------ browser phone

  // The browser as the agent's phone (SPEC §4 POST /api/v1/agents/{agent}/
  // webrtc, WHIP-style, RFC 9725): the microphone is checked first (its
  // level on a meter), then one offer with every candidate in it (no
  // trickle: powerdial is ICE-lite with a known address) goes to the server,
  // whose answer sets the connection up. While it is up, powerdial calls
  // the agent here as it would call a desk phone. Exposed as
  // window.powerdialPhone so a test can read getStats().
  const phone = { pc: null, mic: null, location: null, agent: null, meter: null, audioCtx: null };
  window.powerdialPhone = phone;
  const UDP_BLOCKED =
    "No audio path to powerdial: the network seems to block UDP. Ask for UDP to the server's media ports (server.rtp_ports) to be allowed, or use a desk phone.";

  function phoneStatus(text, state) {
    setText($('phone-status'), text);
    $('phone').dataset.state = state || '';
  }

  function phoneButtons(on) {
    $('btn-phone').hidden = on;
    $('btn-mute').hidden = !on;
    $('btn-phone-off').hidden = !on;
    $('mic-level').hidden = !on;
    document.querySelector('.mic-label').hidden = !on;
  }

  function startMeter(stream) {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return;
    const ctx = new Ctx();
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 512;
    ctx.createMediaStreamSource(stream).connect(analyser);
    const buf = new Float32Array(analyser.fftSize);
    phone.audioCtx = ctx;
    phone.meter = setInterval(() => {
      analyser.getFloatTimeDomainData(buf);
      let sum = 0;
      for (const v of buf) sum += v * v;
      // RMS scaled so that speech fills most of the bar.
      $('mic-level').value = Math.min(1, Math.sqrt(sum / buf.length) * 4);
    }, 100);
  }

  function phoneTeardown() {
    if (phone.meter) clearInterval(phone.meter);
    if (phone.audioCtx) phone.audioCtx.close().catch(() => {});
    if (phone.pc) phone.pc.close();
    if (phone.mic) phone.mic.getTracks().forEach((t) => t.stop());
    phone.pc = phone.mic = phone.meter = phone.audioCtx = null;
    $('mic-level').value = 0;
    $('btn-mute').setAttribute('aria-pressed', 'false');
    setText($('btn-mute'), 'Mute');
    phoneButtons(false);
  }

  /** Hangs the phone up on the server (DELETE its Location). */
  function phoneRelease(keepalive) {
    const loc = phone.location;
    phone.location = null;
    if (loc) {
      fetch(loc, { method: 'DELETE', headers: { Authorization: 'Bearer ' + token }, keepalive }).catch(() => {});
    }
  }

  async function phoneOn() {
    const name = isAgent() ? who.agent : $('agent-name').value;
    if (!name) {
      phoneStatus('Pick an agent first.', 'error');
      return;
    }
    if (!window.RTCPeerConnection || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      phoneStatus(
        'This browser cannot be a phone here: open the console over HTTPS (or on localhost) in a current browser.',
        'error',
      );
      return;
    }
    phoneStatus('Checking your microphone…', 'busy');
    try {
      phone.mic = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      });
    } catch (e) {
      phone.mic = null;
      const refused = e.name === 'NotAllowedError' || e.name === 'SecurityError';
      phoneStatus(
        refused
          ? 'The microphone was refused: allow it for this site (the microphone icon in the address bar), then try again.'
          : e.name === 'NotFoundError'
            ? 'No microphone was found: plug a headset in, then try again.'
            : 'The microphone cannot be used (' + e.message + '): close other apps using it, then try again.',
        'error',
      );
      return;
    }
    phoneButtons(true);
    startMeter(phone.mic);
    phoneStatus('Connecting your browser to powerdial… speak: the microphone bar should move.', 'busy');
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' });
    phone.pc = pc;
    phone.agent = name;
    const track = phone.mic.getAudioTracks()[0];
    pc.addTransceiver(track, { direction: 'sendrecv', streams: [phone.mic] });
    pc.ontrack = (ev) => {
      const audio = $('phone-audio');
      audio.srcObject = ev.streams[0] || new MediaStream([ev.track]);
      audio.play().catch(() => {});
    };
    pc.onconnectionstatechange = () => {
      if (phone.pc !== pc) return;
      const st = pc.connectionState;
      if (st === 'connected') {
        phoneStatus(`This browser is ${name}'s phone: join a session and calls come here.`, 'up');
      } else if (st === 'failed') {
        phoneTeardown();
        phoneRelease(false);
        phoneStatus(UDP_BLOCKED, 'error');
      } else if (st === 'disconnected') {
        phoneStatus('The audio connection is interrupted; waiting for it to come back…', 'busy');
      }
    };
    try {
      await pc.setLocalDescription(await pc.createOffer());
      // No trickle (RFC 9725 §4.2): wait for the candidates, at most 2 s.
      await new Promise((resolve) => {
        if (pc.iceGatheringState === 'complete') return resolve();
        const t = setTimeout(resolve, 2000);
        pc.addEventListener('icegatheringstatechange', () => {
          if (pc.iceGatheringState === 'complete') {
            clearTimeout(t);
            resolve();
          }
        });
      });
      const res = await fetch(`/api/v1/agents/${encodeURIComponent(name)}/webrtc`, {
        method: 'POST',
        headers: { Authorization: 'Bearer ' + token, 'Content-Type': 'application/sdp' },
        body: pc.localDescription.sdp,
      });
      if (!res.ok) {
        let msg = res.statusText;
        try {
          msg = (await res.json()).error.message || msg;
        } catch (_) {}
        throw new Error(msg);
      }
      phone.location = res.headers.get('Location');
      await pc.setRemoteDescription({ type: 'answer', sdp: await res.text() });
      // ICE checks towards a blocked UDP port only fail after ~30 s in
      // Chromium; powerdial gives up after 20 s, so say it by then.
      setTimeout(() => {
        if (phone.pc === pc && pc.connectionState !== 'connected') {
          phoneTeardown();
          phoneRelease(false);
          phoneStatus(UDP_BLOCKED, 'error');
        }
      }, 15000);
    } catch (e) {
      phoneTeardown();
      phoneRelease(false);
      phoneStatus('The browser phone could not start: ' + e.message, 'error');
    }
  }

  $('btn-phone').addEventListener('click', () => phoneOn());
  $('btn-phone-off').addEventListener('click', () => {
    phoneTeardown();
    phoneRelease(false);
    phoneStatus('This browser is no longer your phone.', '');
  });
  $('btn-mute').addEventListener('click', () => {
    const track = phone.mic && phone.mic.getAudioTracks()[0];
    if (!track) return;
    track.enabled = !track.enabled;
    $('btn-mute').setAttribute('aria-pressed', String(!track.enabled));
    setText($('btn-mute'), track.enabled ? 'Mute' : 'Unmute');
    setText($('phone-status'), track.enabled ? 'Microphone on.' : 'Muted: the other side does not hear you.');
  });
  // Closing the tab hangs the phone up rather than leaving powerdial to
  // wait for ICE to time out.
  window.addEventListener('pagehide', () => phoneRelease(true));


  function showAgentError(e) {
    $('join-error').textContent = e.message;
  }

  async function loadAgentLists() {
    const saved = JSON.parse(sessionStorage.getItem(AGENT_KEY) || 'null');
    await Promise.all([
      fillSessions($('agent-session'), saved && saved.sessionId),
      fillAgents($('agent-name'), saved && saved.name),
    ]);
  }

  stream.on({
    event(msg) {
      if (me.sessionId == null || msg.session_id !== me.sessionId) return;
      if (msg.type === 'agent_state' && msg.agent === me.name) {
        me.eventSeq += 1;
        applyMyState(msg.state, msg.lead_id, msg.call_id);
      } else if (msg.type === 'queue') {
        const done = !!(msg.counts && msg.counts.done);
        if (done !== me.sessionDone) {
          me.sessionDone = done;
          renderCallbar();
        }
      }
    },
    resync() {
      if (me.sessionId != null) loadMySession().catch(showAgentError);
    },
  });

  // -------------------------------------------------------- admin view

  // eventSeq: agent-state events applied, as for the agent view.
  const admin = { sessionId: null, agents: new Map(), queueTimer: null, eventSeq: 0 };

  const COUNT_LABELS = [
    ['in_view', 'In the view'],
    ['queued', 'Ready to call'],
    ['calling', 'Being called'],
    ['answered', 'Answered'],
    ['blocked', 'Blocked for now'],
    ['awaiting_refresh', 'Waiting for a refresh'],
  ];

  function renderCounts(c) {
    const dl = $('counts');
    dl.textContent = '';
    for (const [k, label] of COUNT_LABELS) {
      const d = document.createElement('div');
      const dt = document.createElement('dt');
      dt.textContent = label;
      const dd = document.createElement('dd');
      dd.textContent = String(c[k] ?? 0);
      dd.dataset.count = k;
      d.append(dt, dd);
      dl.append(d);
    }
    if (c.done) {
      const d = document.createElement('div');
      const dt = document.createElement('dt');
      dt.textContent = 'Session';
      const dd = document.createElement('dd');
      dd.textContent = 'Done';
      d.append(dt, dd);
      dl.append(d);
    }
  }

  function agentRow(name) {
    const tbody = $('agents-table').tBodies[0];
    let tr = [...tbody.rows].find((r) => r.dataset.agent === name);
    if (!tr) {
      tr = tbody.insertRow();
      tr.dataset.agent = name;
      const th = document.createElement('th');
      th.scope = 'row';
      th.textContent = name;
      tr.append(th);
      for (const cls of ['state', 'lead', 'since']) {
        const td = tr.insertCell();
        td.className = cls;
      }
      tr.cells[3].classList.add('num');
    }
    $('agents-empty').hidden = true;
    $('agents-table').hidden = false;
    return tr;
  }

  async function setAgent(a, fromEvent) {
    const prev = admin.agents.get(a.agent);
    const since = prev && prev.state === a.state ? prev.since : Date.now();
    admin.agents.set(a.agent, { ...a, since });
    const tr = agentRow(a.agent);
    const st = tr.querySelector('.state');
    st.textContent = STATE_WORDS[a.state] || a.state;
    st.dataset.state = a.state;
    if (fromEvent && (!prev || prev.state !== a.state)) {
      tr.classList.remove('changed');
      void tr.offsetWidth;
      tr.classList.add('changed');
    }
    const cell = tr.querySelector('.lead');
    if (a.lead_id == null || !WITH_LEAD.has(a.state)) {
      cell.textContent = '';
    } else {
      try {
        const l = await lead(a.lead_id);
        const cur = admin.agents.get(a.agent);
        if (cur && cur.lead_id === a.lead_id) cell.textContent = `${l.name} · ${l.number}`;
      } catch (_) {
        cell.textContent = `Lead ${a.lead_id}`;
      }
    }
    adminTick();
  }

  function adminTick() {
    for (const [name, a] of admin.agents) {
      const tr = agentRow(name);
      setText(tr.querySelector('.since'), fmtDuration(Date.now() - a.since));
    }
  }

  async function loadAdmin() {
    const sid = admin.sessionId;
    if (sid == null) {
      $('admin-body').hidden = true;
      return;
    }
    $('admin-error').textContent = '';
    const seq = admin.eventSeq;
    const s = await api('GET', `/api/v1/sessions/${sid}`);
    if (admin.sessionId !== sid) return;
    // Events that arrived meanwhile are newer than this snapshot: keep them.
    const fresh = admin.eventSeq === seq;
    $('admin-body').hidden = false;
    renderCounts(s.counts || {});
    const names = new Set((s.agents || []).map((a) => a.agent));
    if (fresh) {
      for (const tr of [...$('agents-table').tBodies[0].rows]) {
        if (!names.has(tr.dataset.agent)) tr.remove();
      }
      for (const name of [...admin.agents.keys()]) if (!names.has(name)) admin.agents.delete(name);
    }
    const any = admin.agents.size > 0 || names.size > 0;
    $('agents-empty').hidden = any;
    $('agents-table').hidden = !any;
    for (const a of s.agents || []) if (fresh || !admin.agents.has(a.agent)) setAgent(a, false);
    await Promise.all([loadQueue(), loadStats()]);
  }

  // ------------------------------------------- admin: statistics and chart

  const CHART_HOURS = 12;
  /** Outcome colours of the chart, in stacking order (bottom first). */
  const OUTCOME_COLOURS = [
    ['answered', '#1b7a3d'],
    ['no_answer', '#8fa3b8'],
    ['busy', '#d08a1c'],
    ['skipped', '#7e57c2'],
    ['temporary_error', '#c0392b'],
    ['restricted', '#5b6570'],
    ['in_progress', '#1f5fbf'],
  ];

  const fmtRate = (r) => (r == null ? '—' : `${Math.round(r * 1000) / 10} %`);
  const fmtRing = (ms) => (ms == null ? '—' : ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`);

  async function loadStats() {
    const sid = admin.sessionId;
    if (sid == null) return;
    const st = await api('GET', `/api/v1/sessions/${sid}/stats?hours=${CHART_HOURS}`);
    if (admin.sessionId !== sid) return;
    const dl = $('stats');
    dl.textContent = '';
    const item = (label, value, key) => {
      const d = el('div');
      const dd = el('dd', null, value);
      if (key) dd.dataset.stat = key;
      d.append(el('dt', null, label), dd);
      dl.append(d);
    };
    item('Calls', String(st.calls), 'calls');
    item('Answer rate', fmtRate(st.answer_rate), 'answer_rate');
    item('Median ring time', fmtRing(st.median_ring_ms), 'median_ring');
    for (const [k] of OUTCOME_COLOURS) {
      const n = st.by_outcome[k] || 0;
      if (n > 0 || k === 'answered') item(OUTCOME_WORDS[k], String(n), 'outcome_' + k);
    }
    renderChart(st.per_hour);
  }

  const SVG = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text != null) e.textContent = text;
    return e;
  }

  /** Calls per hour, stacked by outcome: a small inline SVG bar chart. */
  function renderChart(hours) {
    const box = $('chart');
    box.textContent = '';
    const W = 720;
    const H = 170;
    const left = 34;
    const bottom = 22;
    const top = 10;
    const plotH = H - bottom - top;
    const slot = (W - left - 6) / Math.max(1, hours.length);
    const max = Math.max(1, ...hours.map((h) => h.calls));
    // A round top for the scale.
    const step = max <= 5 ? 1 : max <= 10 ? 2 : max <= 50 ? 10 : Math.ceil(max / 50) * 10;
    const yMax = Math.ceil(max / step) * step;
    const total = hours.reduce((n, h) => n + h.calls, 0);
    const chart = svg('svg', {
      viewBox: `0 0 ${W} ${H}`,
      role: 'img',
      'aria-label': `Calls per hour over the last ${hours.length} hours: ${total} in all`,
    });
    for (let v = 0; v <= yMax; v += step) {
      const y = top + plotH - (v / yMax) * plotH;
      chart.append(svg('line', { x1: left, x2: W - 4, y1: y, y2: y, stroke: '#e3e7eb', 'stroke-width': 1 }));
      chart.append(svg('text', { x: left - 6, y: y + 4, 'text-anchor': 'end', 'font-size': 11, fill: '#5b6570' }, String(v)));
    }
    hours.forEach((h, i) => {
      const x = left + i * slot + slot * 0.15;
      const w = slot * 0.7;
      let y = top + plotH;
      const g = svg('g', { 'data-hour': h.start, 'data-calls': h.calls });
      const parts = [];
      for (const [k, colour] of OUTCOME_COLOURS) {
        const n = (h.by_outcome && h.by_outcome[k]) || 0;
        if (!n) continue;
        const bh = (n / yMax) * plotH;
        y -= bh;
        g.append(svg('rect', { x, y, width: w, height: bh, fill: colour, 'data-outcome': k }));
        parts.push(`${n} ${OUTCOME_WORDS[k].toLowerCase()}`);
      }
      const start = new Date(h.start);
      const label = start.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
      g.append(svg('title', {}, `${label}: ${h.calls} call${h.calls === 1 ? '' : 's'}${parts.length ? ' (' + parts.join(', ') + ')' : ''}`));
      chart.append(g);
      if (i % 2 === hours.length % 2 || hours.length <= 8) {
        chart.append(svg('text', { x: x + w / 2, y: H - 6, 'text-anchor': 'middle', 'font-size': 11, fill: '#5b6570' }, label));
      }
    });
    if (total === 0) {
      chart.append(
        svg('text', { x: (left + W) / 2, y: top + plotH / 2, 'text-anchor': 'middle', 'font-size': 14, fill: '#5b6570' }, `No calls in the last ${hours.length} hours`),
      );
    }
    box.append(chart);
    const legend = el('div', 'legend');
    for (const [k, colour] of OUTCOME_COLOURS) {
      if (!hours.some((h) => h.by_outcome && h.by_outcome[k])) continue;
      const item = el('span');
      const sw = el('span', 'swatch');
      sw.style.background = colour;
      item.append(sw, document.createTextNode(OUTCOME_WORDS[k]));
      legend.append(item);
    }
    box.append(legend);
    setText($('chart-caption'), `Calls per hour by outcome, last ${hours.length} hours (local time).`);
  }

  // ---------------------------------------------- admin: sessions table

  async function loadSessionsTable() {
    const list = await api('GET', '/api/v1/sessions');
    const stats = await Promise.all(
      list.data.map((s) => api('GET', `/api/v1/sessions/${s.id}/stats?hours=1`).catch(() => null)),
    );
    const tbody = $('sessions-table').tBodies[0];
    tbody.textContent = '';
    list.data.forEach((s, i) => {
      const st = stats[i];
      const tr = tbody.insertRow();
      tr.dataset.session = String(s.id);
      if (s.id === admin.sessionId) tr.classList.add('selected');
      const th = el('th', null, `Session ${s.id}${s.smart_view_name ? ' — ' + s.smart_view_name : ''}`);
      th.scope = 'row';
      tr.append(th);
      const cells = [
        s.state === 'done' ? 'Done (all answered)' : 'Active',
        String((s.agents || []).filter((a) => a.state !== 'left').length),
        st ? String(st.calls) : '—',
        st ? fmtRate(st.answer_rate) : '—',
        st ? fmtRing(st.median_ring_ms) : '—',
      ];
      const keys = ['state', 'agents', 'calls', 'answer_rate', 'median_ring'];
      cells.forEach((t, j) => {
        const td = tr.insertCell();
        td.textContent = t;
        td.dataset.stat = keys[j];
        if (j >= 1) td.className = 'num';
      });
      tr.addEventListener('click', () => {
        $('admin-session').value = String(s.id);
        $('admin-session').dispatchEvent(new Event('change'));
      });
      // Live states of the team table start from the sessions' snapshot.
      for (const a of s.agents || []) team.states.set(a.agent, { session: s.id, state: a.state });
    });
    $('sessions-empty').hidden = list.data.length > 0;
    $('sessions-table').hidden = list.data.length === 0;
  }

  let sessionsTimer = null;
  function scheduleSessionsTable() {
    clearTimeout(sessionsTimer);
    sessionsTimer = setTimeout(() => loadSessionsTable().then(renderTeam).catch(showAdminError), 1500);
  }

  // ------------------------------------------------ admin: agents (team)

  const team = { agents: [], states: new Map() };

  async function loadTeam() {
    const list = await api('GET', '/api/v1/agents');
    team.agents = list.data;
    renderTeam();
  }

  function renderTeam() {
    const tbody = $('team-table').tBodies[0];
    tbody.textContent = '';
    for (const a of team.agents) {
      const tr = tbody.insertRow();
      tr.dataset.agent = a.username;
      const th = el('th', null, a.display_name ? `${a.display_name} (${a.username})` : a.username);
      th.scope = 'row';
      tr.append(th);
      tr.insertCell().textContent = a.registered ? 'Registered' : 'Not registered';
      const live = team.states.get(a.username);
      const td = tr.insertCell();
      td.className = 'state';
      td.textContent =
        live && live.state !== 'left'
          ? `${STATE_WORDS[live.state] || live.state} (session ${live.session})`
          : 'Not dialing';
      tr.insertCell().textContent = a.source === 'config' ? 'Config file' : 'Console / API';
    }
  }

  $('new-agent-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const username = $('new-agent-username').value.trim();
    const display = $('new-agent-display').value.trim();
    const password = $('new-agent-password').value;
    const body = { username, password };
    if (display) body.display_name = display;
    try {
      await api('POST', '/api/v1/agents', body);
    } catch (e) {
      setText($('new-agent-status'), `Agent ${username} not created: ${e.message}`);
      $('new-agent-status').className = 'error';
      return;
    }
    $('new-agent-status').className = 'hint';
    setText(
      $('new-agent-status'),
      `Agent ${username} created: their phone registers as ${username} with that password (stored only as digest hashes).`,
    );
    $('new-agent-form').reset();
    await loadTeam().catch(showAdminError);
  });

  async function loadQueue() {
    const sid = admin.sessionId;
    if (sid == null) return;
    const q = await api('GET', `/api/v1/sessions/${sid}/queue?explain=1&limit=25`);
    if (admin.sessionId !== sid) return;
    const tbody = $('queue-table').tBodies[0];
    tbody.textContent = '';
    q.data.forEach((e, i) => {
      const tr = tbody.insertRow();
      tr.dataset.lead = String(e.lead_id);
      const cells = [
        String(i + 1),
        e.name || `Lead ${e.lead_id}`,
        e.number || '—',
        e.reason || e.explain || e.state,
      ];
      cells.forEach((text, j) => {
        const td = tr.insertCell();
        td.textContent = text;
        if (j === 0 || j === 2) td.className = 'num';
        if (j === 3 && e.rule) td.title = e.explain || e.rule;
      });
    });
    $('queue-empty').hidden = q.data.length > 0;
    $('queue-table').hidden = q.data.length === 0;
  }

  // A call's outcome is stored just after its end is announced: read the
  // statistics shortly after, and once more a little later.
  let statsTimers = [];
  function scheduleStats() {
    for (const t of statsTimers) clearTimeout(t);
    statsTimers = [400, 2000].map((ms) => setTimeout(() => loadStats().catch(showAdminError), ms));
  }

  function scheduleQueue() {
    clearTimeout(admin.queueTimer);
    admin.queueTimer = setTimeout(() => loadQueue().catch(showAdminError), 250);
  }

  function showAdminError(e) {
    $('admin-error').textContent = e.message;
  }

  $('admin-session').addEventListener('change', () => {
    admin.sessionId = $('admin-session').value ? Number($('admin-session').value) : null;
    for (const tr of $('sessions-table').tBodies[0].rows) {
      tr.classList.toggle('selected', tr.dataset.session === String(admin.sessionId));
    }
    admin.agents.clear();
    $('agents-table').tBodies[0].textContent = '';
    setText($('settings-status'), '');
    loadAdmin().catch(showAdminError);
    renderSettings().catch(showAdminError);
  });
  $('admin-reload').addEventListener('click', () => loadAdminList().catch(showAdminError));

  async function loadAdminList() {
    await Promise.all([fillSessions($('admin-session'), admin.sessionId), loadSessionsTable(), loadTeam()]);
    const v = $('admin-session').value;
    const sid = v ? Number(v) : null;
    if (sid !== admin.sessionId) {
      admin.sessionId = sid;
      admin.agents.clear();
      $('agents-table').tBodies[0].textContent = '';
    }
    if ($('settings').parentElement === $('admin-settings-slot')) renderSettings().catch(showAdminError);
    await loadAdmin();
  }

  stream.on({
    event(msg) {
      if (isAgent()) return;
      if (msg.type === 'agent_state') {
        team.states.set(msg.agent, { session: msg.session_id, state: msg.state });
        renderTeam();
      }
      if (msg.type === 'call_ended') scheduleSessionsTable();
      if (admin.sessionId == null || msg.session_id !== admin.sessionId) return;
      switch (msg.type) {
        case 'agent_state':
          admin.eventSeq += 1;
          setAgent({ agent: msg.agent, state: msg.state, lead_id: msg.lead_id, call_id: msg.call_id }, true);
          break;
        case 'queue':
          renderCounts(msg.counts || {});
          scheduleQueue();
          break;
        case 'call_ended':
          scheduleQueue();
          scheduleStats();
          break;
        case 'reset':
          loadAdmin().catch(showAdminError);
          break;
        default:
          break;
      }
    },
    resync() {
      if (admin.sessionId != null) loadAdmin().catch(showAdminError);
    },
  });

  // ------------------------------------------------------------- views

  function route() {
    if (shareTokenInHash()) {
      showShareJoin();
      return;
    }
    let view = location.hash === '#admin' ? 'admin' : 'agent';
    if (view === 'admin' && isAgent()) {
      // 403 in words: the admin view is the admin token's.
      notice(`The admin view needs the admin token: you are signed in as agent ${who.agent}.`);
      view = 'agent';
    } else {
      notice('');
    }
    $('tab-agent').setAttribute('aria-pressed', String(view === 'agent'));
    $('tab-admin').setAttribute('aria-pressed', String(view === 'admin'));
    if (!token) {
      showSignedIn(false);
      return;
    }
    showSignedIn(true);
    $('agent-view').hidden = view !== 'agent';
    $('admin-view').hidden = view !== 'admin';
    placeSettings(view);
    if (view === 'admin') loadAdminList().catch(showAdminError);
    else loadAgentLists().catch(showAgentError);
  }
  /**
   * One settings panel: always open in the admin view (for the session
   * picked there), a popover under the call bar in the agent view.
   */
  function placeSettings(view) {
    const panel = $('settings');
    if (view === 'admin') {
      $('admin-settings-slot').append(panel);
      panel.hidden = false;
      $('btn-settings').setAttribute('aria-expanded', 'false');
      if (admin.sessionId != null) renderSettings().catch(() => {});
    } else if (panel.parentElement !== $('agent-view')) {
      $('shortcuts').after(panel);
      panel.hidden = true;
    }
  }

  $('tab-agent').addEventListener('click', () => {
    location.hash = '#agent';
  });
  $('tab-admin').addEventListener('click', () => {
    location.hash = '#admin';
  });
  window.addEventListener('hashchange', route);

  async function restoreAgent() {
    const saved = JSON.parse(sessionStorage.getItem(AGENT_KEY) || 'null');
    if (!saved || me.sessionId != null) return;
    me.sessionId = saved.sessionId;
    me.name = saved.name;
    try {
      await loadMySession();
    } catch (e) {
      me.sessionId = null;
      me.name = null;
      sessionStorage.removeItem(AGENT_KEY);
      renderCallbar();
    }
  }

  function start() {
    $('signin-error').textContent = '';
    route();
    restoreAgent();
    stream.start();
  }

  setInterval(() => {
    tick();
    adminTick();
  }, 1000);

  if (token && who) start();
  else if (shareTokenInHash()) route();
  else showSignedIn(false);
})();
