// mss web inbox: progressive enhancements only; every page works without this file.
// Directory search as you type on the compose page: results come from /directory.json (JSON,
// same origin, the session cookie); a chosen entry becomes a checked "to" checkbox. On the
// directory page, the same results replace the list as the query is typed.
(function () {
  "use strict";

  function text(tag, value, className) {
    var element = document.createElement(tag);
    element.textContent = value;
    if (className) { element.className = className; }
    return element;
  }

  // An entry's profession, organisation and city, then its address and RPPS number, as two
  // spans of the classes prefix-details and prefix-address.
  function describe(element, item, prefix) {
    var details = [item.profession, item.organisation, item.city].filter(Boolean).join(" · ");
    if (details) { element.appendChild(text("span", details, prefix + "-details")); }
    element.appendChild(text("span", item.address + (item.rpps ? " · RPPS " + item.rpps : ""), prefix + "-address"));
  }

  // Asks the directory (path + the typed query) 200 ms after the last key of two characters
  // or more; only the answer to the latest query reaches on.answer, or on.failed.
  function searchAsYouType(input, path, on) {
    var timer = null;
    var sequence = 0;

    function search() {
      var query = input.value.trim();
      var mine = ++sequence;
      if (query.length < 2) { on.tooShort(); return; }
      on.waiting();
      fetch(path + encodeURIComponent(query), {
        credentials: "same-origin",
        headers: { "Accept": "application/json" }
      }).then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      }).then(function (data) {
        if (mine === sequence) { on.answer(data, query); }
      }).catch(function () {
        if (mine === sequence) { on.failed(); }
      });
    }

    input.addEventListener("input", function () {
      window.clearTimeout(timer);
      timer = window.setTimeout(search, 200);
    });
  }

  function setupDirectorySearch(box) {
    var input = box.querySelector("input[type=search]");
    var results = document.getElementById("to-results");
    var chosen = document.getElementById("chosen");
    var fallback = document.querySelector("[data-no-script]");
    box.hidden = false;
    if (fallback) { fallback.hidden = true; }

    function say(message) {
      results.textContent = "";
      results.appendChild(text("li", message, "muted"));
    }

    function add(item) {
      var existing = chosen.querySelector("input[name=to][value=\"" + CSS.escape(item.address) + "\"]");
      if (existing) {
        existing.checked = true;
      } else {
        var id = "to-added-" + chosen.children.length + "-" + Date.now();
        var li = document.createElement("li");
        var box = document.createElement("input");
        box.type = "checkbox";
        box.name = "to";
        box.value = item.address;
        box.id = id;
        box.checked = true;
        var label = text("label", (item.name ? item.name + " " : "") + "<" + item.address + ">");
        label.htmlFor = id;
        li.appendChild(box);
        li.appendChild(label);
        chosen.appendChild(li);
      }
      input.value = "";
      results.textContent = "";
      input.focus();
    }

    function show(items) {
      results.textContent = "";
      if (!items.length) { say(input.dataset.none); return; }
      items.forEach(function (item) {
        var li = document.createElement("li");
        var button = document.createElement("button");
        button.type = "button";
        button.className = "result";
        button.appendChild(text("strong", item.name || item.address));
        describe(button, item, "result");
        button.setAttribute("aria-label", input.dataset.add + " " + (item.name || "") + " " + item.address);
        button.addEventListener("click", function () { add(item); });
        li.appendChild(button);
        results.appendChild(li);
      });
    }

    searchAsYouType(input, "/directory.json?count=0&q=", {
      tooShort: function () { results.textContent = ""; },
      waiting: function () { say(input.dataset.searching); },
      answer: function (data) { show(data.items || []); },
      failed: function () { say("—"); }
    });
    input.addEventListener("keydown", function (event) {
      // Enter picks the first result instead of sending the form half-written.
      if (event.key === "Enter") {
        event.preventDefault();
        var first = results.querySelector("button.result");
        if (first) { first.click(); }
      } else if (event.key === "ArrowDown") {
        var firstResult = results.querySelector("button.result");
        if (firstResult) { event.preventDefault(); firstResult.focus(); }
      }
    });
    results.addEventListener("keydown", function (event) {
      var buttons = Array.prototype.slice.call(results.querySelectorAll("button.result"));
      var index = buttons.indexOf(document.activeElement);
      if (event.key === "ArrowDown" && index >= 0 && index < buttons.length - 1) {
        event.preventDefault(); buttons[index + 1].focus();
      } else if (event.key === "ArrowUp" && index > 0) {
        event.preventDefault(); buttons[index - 1].focus();
      } else if (event.key === "ArrowUp" && index === 0) {
        event.preventDefault(); input.focus();
      } else if (event.key === "Escape") {
        results.textContent = ""; input.focus();
      }
    });
  }

  function setupDirectoryBrowse(form) {
    var input = form.querySelector("input[type=search]");
    var results = document.getElementById("directory-results");
    var count = document.getElementById("directory-count");
    var pager = document.querySelector(".pager");

    function entry(item) {
      var li = document.createElement("li");
      li.className = "entry-item";
      var main = text("div", "", "entry-main");
      var link = text("a", item.name || item.address, "entry-name");
      link.href = "/directory/" + encodeURIComponent(item.address);
      main.appendChild(link);
      describe(main, item, "entry");
      var write = text("a", form.dataset.write, "button");
      write.href = "/compose?to=" + encodeURIComponent(item.address);
      write.appendChild(text("span", " " + (item.name || item.address), "visually-hidden"));
      li.appendChild(main);
      li.appendChild(write);
      return li;
    }

    function answer(data, query) {
      var items = data.items || [];
      results.textContent = "";
      items.forEach(function (item) { results.appendChild(entry(item)); });
      if (data.has_next) {
        var more = text("a", form.dataset.more, "more-results");
        more.href = "/directory?q=" + encodeURIComponent(query) + "&page=2";
        var li = document.createElement("li");
        li.appendChild(more);
        results.appendChild(li);
      }
      if (pager) { pager.hidden = true; }
      if (!data.total) {
        count.textContent = form.dataset.none;
      } else {
        count.textContent = data.total === 1 ? form.dataset.countOne : form.dataset.countMany.replace("__N__", data.total);
      }
      if (window.history && window.history.replaceState) {
        window.history.replaceState(null, "", "/directory?q=" + encodeURIComponent(query));
      }
    }

    searchAsYouType(input, "/directory.json?per_page=20&q=", {
      tooShort: function () {},
      waiting: function () { count.textContent = form.dataset.searching; },
      answer: answer,
      failed: function () { count.textContent = "—"; }
    });
  }

  document.querySelectorAll("[data-directory-search]").forEach(setupDirectorySearch);
  document.querySelectorAll("[data-directory-browse]").forEach(setupDirectoryBrowse);
})();
