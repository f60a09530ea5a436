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
