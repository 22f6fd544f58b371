// powerdial console (SPEC §1, §4 "GET /"): the agent's call bar and notes
// box, and the admin's live view of a session. Plain JavaScript, no build
// step. Every API call carries the admin token the user typed (kept in this
// tab's sessionStorage); live updates come from GET /api/v1/events, read
// with fetch() because EventSource cannot send the Authorization header.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = 'powerdial.token';
  const AGENT_KEY = 'powerdial.agent';

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
    const headers = { Authorization: 'Bearer ' + token };
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
    if (res.status === 401 && !opts.signingIn) {
      signOut('The admin token was refused: sign in again.');
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
      throw new ApiError(res.status, err.code || 'http_' + res.status, err.message || res.statusText);
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
    $('nav').hidden = !on;
    $('signout').hidden = !on;
    if (!on) {
      $('agent-view').hidden = true;
      $('admin-view').hidden = true;
      $('stream-status').textContent = '';
      $('stream-status').className = 'stream';
    }
  }

  function signOut(message) {
    token = '';
    sessionStorage.removeItem(TOKEN_KEY);
    stream.stop();
    banner('');
    showSignedIn(false);
    $('signin-error').textContent = message || '';
    $('token').focus();
  }

  $('signin-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const t = $('token').value.trim();
    if (!t) return;
    token = t;
    $('signin-error').textContent = '';
    try {
      await api('GET', '/api/v1/sessions', undefined, { signingIn: true });
    } catch (e) {
      token = '';
      $('signin-error').textContent =
        e.status === 401
          ? 'That is not this server’s admin token. Check it and try again.'
          : 'Could not sign in: ' + e.message;
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, t);
    $('token').value = '';
    start();
  });

  $('signout').addEventListener('click', () => signOut(''));

  function banner(text) {
    $('banner').hidden = !text;
    $('banner').textContent = text;
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
            signOut('The admin token was refused: sign in again.');
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
    if (state !== me.state) me.since = Date.now();
    if (!['dialing', 'ringing', 'connected'].includes(state)) me.pauseAfterCall = false;
    me.state = state;
    me.leadId = leadId == null ? null : leadId;
    // The notes box stays on the last call (in wrap-up, paused, idle) until
    // the next call starts: notes may be finished at any time.
    if (callId != null && callId !== notes.callId) switchNotes(callId);
    me.callId = callId == null ? null : callId;
    renderCallbar();
  }

  async function renderCallbar() {
    $('callbar').hidden = me.sessionId == null;
    $('notes-panel').hidden = me.sessionId == null;
    if (me.sessionId == null) return;
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
        setText($('notes-status'), 'Saved at ' + new Date().toLocaleTimeString());
      }
    } catch (e) {
      if (notes.callId === id) {
        notes.dirty = true;
        setText($('notes-status'), 'Not saved: ' + e.message);
      }
    }
  }

  $('notes').addEventListener('input', () => {
    if (notes.callId == null) return;
    notes.dirty = true;
    setText($('notes-status'), 'Typing… (the dialer waits while you type)');
    const now = Date.now();
    if (now - notes.lastTyping >= typingInterval() && me.sessionId != null) {
      notes.lastTyping = now;
      api('POST', `/api/v1/sessions/${me.sessionId}/agents/${encodeURIComponent(me.name)}/typing`).catch(
        () => {},
      );
    }
    clearTimeout(notes.saveTimer);
    notes.saveTimer = setTimeout(saveNotes, 800);
  });
  $('notes').addEventListener('blur', () => saveNotes());
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
  $('btn-next').addEventListener('click', () => agentAction('next'));

  $('join-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    $('join-error').textContent = '';
    const sid = $('agent-session').value;
    const name = $('agent-name').value;
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
    await loadQueue();
  }

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

  function scheduleQueue() {
    clearTimeout(admin.queueTimer);
    admin.queueTimer = setTimeout(() => loadQueue().catch(showAdminError), 250);
  }

  function showAdminError(e) {
    $('admin-error').textContent = e.message;
  }

  $('admin-session').addEventListener('change', () => {
    admin.sessionId = $('admin-session').value ? Number($('admin-session').value) : null;
    admin.agents.clear();
    $('agents-table').tBodies[0].textContent = '';
    loadAdmin().catch(showAdminError);
  });
  $('admin-reload').addEventListener('click', () => loadAdminList().catch(showAdminError));

  async function loadAdminList() {
    await fillSessions($('admin-session'), admin.sessionId);
    const v = $('admin-session').value;
    const sid = v ? Number(v) : null;
    if (sid !== admin.sessionId) {
      admin.sessionId = sid;
      admin.agents.clear();
      $('agents-table').tBodies[0].textContent = '';
    }
    await loadAdmin();
  }

  stream.on({
    event(msg) {
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
    const view = location.hash === '#admin' ? 'admin' : 'agent';
    $('tab-agent').setAttribute('aria-pressed', String(view === 'agent'));
    $('tab-admin').setAttribute('aria-pressed', String(view === 'admin'));
    if (!token) return;
    $('agent-view').hidden = view !== 'agent';
    $('admin-view').hidden = view !== 'admin';
    if (view === 'admin') loadAdminList().catch(showAdminError);
    else loadAgentLists().catch(showAgentError);
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
    showSignedIn(true);
    $('signin-error').textContent = '';
    route();
    restoreAgent();
    stream.start();
  }

  setInterval(() => {
    tick();
    adminTick();
  }, 1000);

  if (token) start();
  else showSignedIn(false);
})();
