// dialbridge browser phone: registers this browser over SIP over WebSocket (JsSIP) as one of
// the agent's devices, and answers calls here. The call's media is WebRTC's (ICE, DTLS-SRTP,
// G.711) with the dialbridge relay.
//
// State is shown as text (#reg-state, #call-state, #media-state, each with a data-state
// attribute) for people and for tests alike. Credentials stay in this page's memory.

const JsSIP = window.JsSIP;
const $ = (sel) => document.querySelector(sel);

let ua = null;
let session = null;
let statsTimer = null;

function setState(id, state, text) {
  const el = $(id);
  el.dataset.state = state;
  el.textContent = text ?? state;
  const s = $('#status');
  s.textContent = `${id === '#reg-state' ? 'Registration' : 'Call'}: ${text ?? state}`;
}

/** Packet counts of the call's audio, from the peer connection's getStats. */
async function mediaStats() {
  const pc = session?.connection;
  if (!pc) return null;
  const out = { packetsSent: 0, packetsReceived: 0, bytesSent: 0, bytesReceived: 0, codec: null };
  const report = await pc.getStats();
  report.forEach((r) => {
    if (r.type === 'outbound-rtp' && r.kind === 'audio') {
      out.packetsSent += r.packetsSent ?? 0;
      out.bytesSent += r.bytesSent ?? 0;
    }
    if (r.type === 'inbound-rtp' && r.kind === 'audio') {
      out.packetsReceived += r.packetsReceived ?? 0;
      out.bytesReceived += r.bytesReceived ?? 0;
      const c = r.codecId && report.get(r.codecId);
      if (c) out.codec = c.mimeType;
    }
  });
  return out;
}
window.phoneStats = mediaStats;

function watchMedia() {
  clearInterval(statsTimer);
  statsTimer = setInterval(async () => {
    const s = await mediaStats();
    const el = $('#media-state');
    if (!s) return;
    el.dataset.sent = String(s.packetsSent);
    el.dataset.received = String(s.packetsReceived);
    el.textContent = `${s.codec ?? 'audio'}: sent ${s.packetsSent} packets, received ${s.packetsReceived}`;
  }, 500);
}

function endCall(why) {
  clearInterval(statsTimer);
  session = null;
  $('#answer').disabled = true;
  $('#hangup').disabled = true;
  setState('#call-state', 'ended', `ended (${why})`);
}

function onSession({ session: s, originator, request }) {
  if (originator === 'remote') {
    if (session) {
      s.terminate({ status_code: 486, reason_phrase: 'Busy Here' });
      return;
    }
    session = s;
    const from = request?.from?.display_name || request?.from?.uri?.user || 'unknown';
    $('#peer').textContent = `from ${from}`;
    setState('#call-state', 'ringing', 'ringing');
    $('#answer').disabled = false;
  } else {
    session = s;
    setState('#call-state', 'calling', 'calling');
    s.on('progress', () => setState('#call-state', 'ringing-out', 'ringing'));
  }
  $('#hangup').disabled = false;
  s.on('peerconnection', ({ peerconnection }) => {
    peerconnection.addEventListener('track', (ev) => {
      const audio = $('#remote');
      audio.srcObject = ev.streams[0] ?? new MediaStream([ev.track]);
    });
  });
  s.on('accepted', () => setState('#call-state', 'answered', 'answered'));
  s.on('confirmed', () => {
    setState('#call-state', 'in-call', 'in call');
    watchMedia();
  });
  s.on('ended', (e) => endCall(e.cause || 'hung up'));
  s.on('failed', (e) => endCall(e.cause || 'failed'));
}

function answer() {
  if (!session) return;
  $('#answer').disabled = true;
  setState('#call-state', 'answering', 'answering');
  session.answer({
    mediaConstraints: { audio: true, video: false },
    pcConfig: { iceServers: [], rtcpMuxPolicy: 'require' },
  });
}

/** Calls a number (or SIP address) through dialbridge, which routes it like any phone's. */
function dial(ev) {
  ev.preventDefault();
  const number = $('#number').value.trim();
  if (!ua || !number || session) return;
  const domain = ua.configuration.uri.host;
  const target = number.startsWith('sip:') ? number : `sip:${number}@${domain}`;
  $('#peer').textContent = `to ${number}`;
  ua.call(target, {
    mediaConstraints: { audio: true, video: false },
    pcConfig: { iceServers: [], rtcpMuxPolicy: 'require' },
  });
}

function hangup() {
  session?.terminate();
}

function register(ev) {
  ev.preventDefault();
  if (ua) ua.stop();
  const ws = $('#ws').value.trim();
  const uri = $('#uri').value.trim();
  const password = $('#password').value;
  try {
    const socket = new JsSIP.WebSocketInterface(ws);
    ua = new JsSIP.UA({
      sockets: [socket],
      uri,
      password,
      register: true,
      register_expires: 300,
      session_timers: true,
    });
  } catch (e) {
    setState('#reg-state', 'failed', `failed: ${e.message}`);
    return;
  }
  ua.on('connecting', () => setState('#reg-state', 'connecting', 'connecting'));
  ua.on('disconnected', () => {
    if ($('#reg-state').dataset.state !== 'failed') setState('#reg-state', 'disconnected', 'disconnected');
  });
  ua.on('registered', () => {
    setState('#reg-state', 'registered', 'registered');
    $('#call').disabled = false;
  });
  ua.on('unregistered', () => {
    setState('#reg-state', 'unregistered', 'unregistered');
    $('#call').disabled = true;
  });
  ua.on('registrationFailed', (e) => setState('#reg-state', 'failed', `failed: ${e.cause}`));
  ua.on('newRTCSession', onSession);
  setState('#reg-state', 'registering', 'registering');
  $('#disconnect').disabled = false;
  ua.start();
}

function unregister() {
  ua?.stop();
  ua = null;
  $('#disconnect').disabled = true;
}

// A link may carry the WebSocket URL and SIP address (never the password).
const params = new URLSearchParams(window.location.search);
if (params.get('ws')) $('#ws').value = params.get('ws');
if (params.get('uri')) $('#uri').value = params.get('uri');
$('#register').addEventListener('submit', register);
$('#disconnect').addEventListener('click', unregister);
$('#answer').addEventListener('click', answer);
$('#dial').addEventListener('submit', dial);
$('#hangup').addEventListener('click', hangup);
