// What both pages do once the provider hands the buyer back: ask the platform's server to
// confirm the payment (it calls kc_tasks' POST /checkouts/confirm with the buyer's token) and
// show the course. 202: paid, the course on its way: look at the buyer's courses until it is there.
"use strict";

function say(text) {
  document.getElementById("result").textContent = text;
}

function showCourse(course) {
  const result = document.getElementById("result");
  result.replaceChildren();
  const heading = document.createElement("h2");
  heading.textContent = "Your course: " + course.title;
  const note = document.createElement("p");
  note.textContent = "It is in your courses now. Happy learning!";
  result.append(heading, note);
}

async function waitForCourse(course) {
  for (let tries = 0; tries < 60; tries++) {
    const answer = await fetch("/api/courses");
    if (answer.ok && (await answer.json()).courses.some((c) => c.id === course.id)) {
      return showCourse(course);
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
  say("Your payment is received; the course will appear in your courses shortly.");
}

async function confirmAndShow(path, checkout) {
  say("Confirming your payment…");
  const answer = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(checkout),
  });
  const result = await answer.json();
  if (answer.status === 200) {
    return showCourse(result.course);
  }
  if (answer.status === 202) {
    say("Your payment is received; your course is on its way…");
    return waitForCourse(result.course);
  }
  say("We could not confirm this payment (" + result.detail + "). If you paid, the course will appear in your courses within minutes.");
}
