// The dashboard page's only script: sign in with an API key, keep the access
// token in memory, fetch the server-rendered view with it every 30 seconds.
'use strict';
(() => {
  const form = document.getElementById('signin');
  const view = document.getElementById('view');
  const status = document.getElementById('status');
  let token = null;
  let timer = null;

  const say = (text) => { status.textContent = text; };

  function signedOut(text) {
    token = null;
    if (timer !== null) { clearInterval(timer); timer = null; }
    form.hidden = false;
    say(text);
  }

  async function load() {
    if (token === null) return;
    let answer;
    try {
      answer = await fetch('dashboard/view', { headers: { authorization: 'Bearer ' + token } });
    } catch (error) {
      say('The dashboard could not be reached; retrying in 30 s.');
      return;
    }
    if (answer.status === 401) { signedOut('Signed out (the access token expired): sign in again.'); return; }
    if (!answer.ok) { say('The dashboard answered ' + answer.status + '; retrying in 30 s.'); return; }
    // Server-rendered and escaped there; parsed inert, then moved in.
    const html = new DOMParser().parseFromString(await answer.text(), 'text/html');
    view.replaceChildren(...html.body.childNodes);
    view.dataset.loaded = new Date().toISOString();
    say('');
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const field = form.elements.namedItem('api_key');
    const apiKey = field.value.trim();
    field.value = '';
    say('Signing in…');
    let answer;
    try {
      answer = await fetch('v1/auth/token', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ api_key: apiKey }),
      });
    } catch (error) {
      say('The API could not be reached.');
      return;
    }
    if (!answer.ok) { say('Sign-in refused (' + answer.status + ').'); return; }
    token = (await answer.json()).access_token;
    form.hidden = true;
    await load();
    timer = setInterval(load, 30000);
  });
})();
