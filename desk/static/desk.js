// Live parts of the desk: server-sent events replace #pop, #state or #board with server-rendered HTML.
(function () {
  "use strict";
  var source = document.body.getAttribute("data-events");
  if (!source || !window.EventSource) return;
  var events = new EventSource(source);
  ["pop", "state", "board"].forEach(function (kind) {
    events.addEventListener(kind, function (e) {
      var target = document.getElementById(kind);
      if (!target) return;
      target.innerHTML = e.data;
      if (kind === "pop") {
        target.classList.remove("flash");
        void target.offsetWidth; // restart the highlight
        target.classList.add("flash");
        var name = document.getElementById("pop-name");
        document.title = "来电:" + (name ? name.textContent : "");
      }
    });
  });
})();
// QA review: the 播放 button plays its recording; a step's time seeks the player to that moment.
(function () {
  "use strict";
  document.addEventListener("click", function (e) {
    var target = e.target;
    if (!(target instanceof HTMLElement)) return;
    var play = target.getAttribute("data-play");
    var seek = target.getAttribute("data-seek");
    var audio = document.getElementById(play || seek || "");
    if (!(audio instanceof HTMLMediaElement)) return;
    if (seek) audio.currentTime = parseFloat(target.getAttribute("data-at") || "0");
    if (audio.paused) {
      var started = audio.play();
      if (started && started.catch) started.catch(function () {});
    } else if (play) {
      audio.pause();
    }
  });
})();
