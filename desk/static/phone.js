// The desk page as the agent's phone (seats with phone = browser|both): JsSIP registers this seat over
// SIP WebSocket once the agent clicks 上线 — that click is also the gesture browsers want before they
// play a ring or a voice. The credentials come from POST /phone/credentials for this session only and
// are renewed before they expire: the page never sees the seat's SIP secret. The screen-pop is desk.js's.
(function () {
  "use strict";
  var box = document.getElementById("phone");
  if (!box) return;
  function $(id) { return document.getElementById(id); }
  if (!window.JsSIP) {  // the page loaded without its SIP library: 上线 stays disabled, and says why
    var missing = $("phone-problem");
    missing.textContent = "网页电话组件没有加载:请刷新页面,仍不行请联系班长。";
    missing.hidden = false;
    return;
  }
  var stateEl = $("phone-state"), callEl = $("phone-call"), timerEl = $("phone-timer"), problemEl = $("phone-problem");
  var onlineBtn = $("phone-online"), offlineBtn = $("phone-offline");
  var answerBtn = $("phone-answer"), hangupBtn = $("phone-hangup"), muteBtn = $("phone-mute");
  var audio = $("phone-audio");
  var STATES = { offline: "离线", connecting: "连接中……", registered: "已注册", reconnecting: "重新连接中", failed: "注册失败" };
  var ALLOW_MIC = "请允许浏览器使用麦克风:点地址栏左侧的图标,把“麦克风”设为“允许”,然后再点上线。";
  var MIC_PROBLEMS = {
    NotAllowedError: ALLOW_MIC,
    SecurityError: ALLOW_MIC,
    NotFoundError: "没有找到麦克风,请插好耳麦后再点上线。",
    NotReadableError: "麦克风正被其他程序占用,请关掉其他通话软件后再试。",
    OverconstrainedError: "这个麦克风用不了,请换一个耳麦再试。"
  };
  var ua = null, session = null, wanted = false, settings = null;
  var renewTimer = 0, clockTimer = 0, sounds = null, ringer = null;

  function setState(name) { stateEl.textContent = STATES[name]; stateEl.setAttribute("data-state", name); }
  function problem(text) { problemEl.textContent = text || ""; problemEl.hidden = !text; }
  function showCall(text, ringing) { callEl.textContent = text; callEl.classList.toggle("ringing", !!ringing); }
  function buttons() {
    var ringing = !!session && session.isInProgress(), talking = !!session && session.isEstablished();
    onlineBtn.hidden = wanted; onlineBtn.disabled = false; offlineBtn.hidden = !wanted;
    answerBtn.disabled = !ringing;
    hangupBtn.disabled = !(ringing || talking);
    muteBtn.disabled = !talking;
    muteBtn.textContent = talking && session.isMuted().audio ? "取消静音" : "静音";
  }

  // The ring: 450 Hz, one second on and four off (the Chinese ringing cadence), for a minute at most.
  function startRinging() {
    if (!sounds || ringer) return;
    var osc = sounds.createOscillator(), gain = sounds.createGain(), t = sounds.currentTime;
    osc.frequency.value = 450;
    gain.gain.value = 0;
    for (var i = 0; i < 12; i++) { gain.gain.setValueAtTime(0.2, t + 5 * i); gain.gain.setValueAtTime(0, t + 5 * i + 1); }
    osc.connect(gain); gain.connect(sounds.destination); osc.start();
    ringer = osc;
  }
  function stopRinging() { if (ringer) { ringer.stop(); ringer.disconnect(); ringer = null; } }

  function tick(since) {
    var s = Math.floor((Date.now() - since) / 1000), two = function (n) { return (n < 10 ? "0" : "") + n; };
    timerEl.textContent = two(Math.floor(s / 60)) + ":" + two(s % 60);
  }

  function checkMicrophone() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      return Promise.reject(new Error("浏览器只允许 https 页面使用麦克风:请用 https 地址打开坐席台。"));
    }
    return navigator.mediaDevices.getUserMedia({ audio: true, video: false }).then(function (stream) {
      stream.getTracks().forEach(function (track) { track.stop(); });
    }, function (err) {
      throw new Error(MIC_PROBLEMS[err.name] || "麦克风无法使用(" + err.name + "),请检查耳麦后再试。");
    });
  }

  function fetchCredentials() {
    var body = new URLSearchParams({ csrf: box.getAttribute("data-csrf") || "" });
    return fetch("/phone/credentials", { method: "POST", body: body, credentials: "same-origin", redirect: "manual" })
      .then(function (r) {
        if (r.status === 403) throw new Error("此坐席未开通网页电话,或页面已过期:请刷新页面后再试。");
        if (!r.ok || (r.headers.get("content-type") || "").indexOf("application/json") !== 0) {
          throw new Error("登录已过期或服务器出错:请刷新页面,重新登录。");
        }
        return r.json();
      }, function () { throw new Error("连不上坐席台服务器,请检查网络后再试。"); });
  }

  // A credential works until `expires`; fetch the next one at two thirds of its life (retry a minute later).
  function renewLater(seconds) {
    clearTimeout(renewTimer);
    renewTimer = setTimeout(function () {
      fetchCredentials().then(function (fresh) {
        if (!ua) return;
        ua.set("authorization_user", fresh.authorization_user);
        ua.set("password", fresh.password);  // the next REGISTER's challenge is answered with these
        renewLater(fresh.lifetime * 2 / 3);
      }, function (err) { problem(err.message); renewLater(60); });
    }, Math.max(30, seconds) * 1000);
  }

  function start(c) {
    settings = c;
    wanted = true;
    ua = new JsSIP.UA({
      sockets: [new JsSIP.WebSocketInterface(c.ws_url)],
      uri: c.uri,
      authorization_user: c.authorization_user,
      password: c.password,
      register: true,
      session_timers: false,
      user_agent: "hotline-desk (JsSIP " + JsSIP.version + ")"
    });
    var registeredOnce = false;
    ua.on("connecting", function () { setState(registeredOnce ? "reconnecting" : "connecting"); });
    ua.on("disconnected", function () { if (wanted) setState(registeredOnce ? "reconnecting" : "connecting"); });
    ua.on("registered", function () {
      registeredOnce = true;
      retried = false;
      setState("registered");
      problem("");
      if (!session) showCall("已上线,等待来电。");
    });
    ua.on("unregistered", function () { if (!wanted) setState("offline"); });
    var retried = false;
    ua.on("registrationFailed", function (e) {
      if (e.cause === JsSIP.C.causes.CONNECTION_ERROR || e.cause === JsSIP.C.causes.REQUEST_TIMEOUT) return;
      if (!retried && ua) {  // e.g. the computer slept past the credential's expiry: once more with a fresh one
        retried = true;
        fetchCredentials().then(function (fresh) {
          if (!ua) return;
          ua.set("authorization_user", fresh.authorization_user);
          ua.set("password", fresh.password);
          ua.register();
        }, function (err) { problem(err.message); });
        return;
      }
      setState("failed");
      problem("话务系统拒绝了注册(" + e.cause + "):请刷新页面后重新上线,仍不行请联系班长。");
    });
    ua.on("newRTCSession", function (e) {
      if (e.originator !== "remote") return;
      if (session) { e.session.terminate({ status_code: 486, reason_phrase: "Busy Here" }); return; }
      offered(e.session, e.request.from.display_name || e.request.from.uri.user);
    });
    ua.start();
    renewLater(c.lifetime * 2 / 3);
    buttons();
  }

  function offered(s, caller) {
    session = s;
    showCall("来电:" + caller, true);
    startRinging();
    s.on("peerconnection", function (e) {
      e.peerconnection.addEventListener("track", function (t) {
        audio.srcObject = t.streams[0];
        var playing = audio.play();
        if (playing && playing.catch) playing.catch(function () {});
      });
    });
    s.on("accepted", function () { stopRinging(); showCall("通话中:" + caller); });
    s.on("confirmed", function () {
      var since = Date.now();
      timerEl.hidden = false;
      tick(since);
      clockTimer = setInterval(function () { tick(since); }, 1000);
      buttons();
    });
    var over = function (e) {
      stopRinging();
      clearInterval(clockTimer);
      timerEl.hidden = true;
      session = null;
      showCall(e.cause === JsSIP.C.causes.USER_DENIED_MEDIA_ACCESS ? "未能接听" : "通话已结束");
      if (e.cause === JsSIP.C.causes.USER_DENIED_MEDIA_ACCESS) problem(ALLOW_MIC);
      buttons();
    };
    s.on("ended", over);
    s.on("failed", over);
    s.on("muted", buttons);
    s.on("unmuted", buttons);
    buttons();
    if (settings && settings.auto_answer) answer();
  }

  function answer() {
    if (session && session.isInProgress()) session.answer({ mediaConstraints: { audio: true, video: false } });
  }

  function stop() {
    wanted = false;
    clearTimeout(renewTimer);
    if (session && !session.isEnded()) session.terminate();
    if (ua) ua.stop();  // un-REGISTERs (Expires: 0), then closes the WebSocket
    ua = null;
    setState("offline");
    showCall("已下线,不会再有来电振铃。");
    buttons();
  }

  onlineBtn.addEventListener("click", function () {
    problem("");
    onlineBtn.disabled = true;
    if (!sounds && window.AudioContext) sounds = new AudioContext();  // created by the click: allowed to sound
    if (sounds) sounds.resume();
    setState("connecting");
    checkMicrophone().then(fetchCredentials).then(start).catch(function (err) {
      problem(err.message);
      setState("offline");
      onlineBtn.disabled = false;
    });
  });
  offlineBtn.addEventListener("click", stop);
  answerBtn.addEventListener("click", answer);
  hangupBtn.addEventListener("click", function () { if (session) session.terminate(); });
  muteBtn.addEventListener("click", function () {
    if (!session) return;
    if (session.isMuted().audio) session.unmute({ audio: true }); else session.mute({ audio: true });
  });
  // leaving the page or logging out takes the seat offline: the IVR stops offering it calls at once
  window.addEventListener("pagehide", function () { if (ua) ua.stop(); });
  var logout = document.querySelector("form[action='/logout']");
  if (logout) {
    logout.addEventListener("submit", function (e) {
      if (!ua) return;
      e.preventDefault();
      var current = ua, sent = false;
      var done = function () { if (!sent) { sent = true; logout.submit(); } };
      current.on("unregistered", done);
      stop();
      setTimeout(done, 1000);  // do not keep the agent waiting on an IVR that does not answer
    });
  }
  onlineBtn.disabled = false;  // ready: the template renders 上线 disabled until this line
})();
