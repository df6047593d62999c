// The OpenID Connect provider the tests sign in against: panva's oidc-provider (OpenID
// Certified), configured for one confidential client and run on loopback over plain HTTP.
//
//   node scripts/oidc-provider/server.mjs [--port N] [--client-id ID] [--client-secret SECRET]
//
// Listens on 127.0.0.1:N (0, the default, picks a free port), with issuer http://127.0.0.1:N.
// Once it listens it prints one line to stdout, {"port": N, "issuer": "http://127.0.0.1:N"},
// and nothing else there: logs go to stderr. The client (default idp-test / idp-test-secret,
// also from OIDC_CLIENT_ID / OIDC_CLIENT_SECRET) uses the authorization code flow with PKCE
// (S256), authenticates with client_secret_basic (client_secret_post is accepted too), and
// may redirect to any http://127.0.0.1:PORT/... or http://localhost:PORT/... URI.
//
// Accounts live in memory, set through a JSON control API on the same port:
//   PUT /test/accounts/:id  {"email", "email_verified", "name", "password", "disabled"}
//       creates or updates an account; fields left out keep their value (or, for a new
//       account: password "pass", email_verified false, disabled false); email or name null
//       removes that claim.
//   GET /test/stats  {"token_requests", "authorization_requests", "logins"}
//
// Sign-in is a plain HTML form at /interaction/:uid (fields `login`, the account's id or
// email, and `password`). Consent is never asked: the client is first-party. A disabled
// account cannot sign in (the authorization ends in error=access_denied), also when its
// browser already has a session.

import { randomUUID } from 'node:crypto';
import * as http from 'node:http';
import { parseArgs } from 'node:util';

import { exportJWK, generateKeyPair } from 'jose';
import Provider, { interactionPolicy } from 'oidc-provider';

// Only the line with the port belongs on stdout; oidc-provider prints notices with
// console.info. Its warning that the in-memory adapter is used goes unsaid: that is the point.
const logError = console.error.bind(console);
console.log = logError;
console.info = logError;
console.debug = logError;
console.warn = (...args) => {
  if (typeof args[0] === 'string' && args[0].includes('in-memory adapter is used')) return;
  logError(...args);
};

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    'client-id': { type: 'string', default: process.env.OIDC_CLIENT_ID || 'idp-test' },
    'client-secret': {
      type: 'string',
      default: process.env.OIDC_CLIENT_SECRET || 'idp-test-secret',
    },
  },
  strict: true,
});
const port = Number(args.port);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`invalid --port: ${args.port}`);
  process.exit(2);
}
const clientId = args['client-id'];

/** Accounts by id: {email, email_verified, name, password, disabled}. */
const accounts = new Map();
const stats = { token_requests: 0, authorization_requests: 0, logins: 0 };

function findAccountByLogin(login) {
  if (accounts.has(login)) return [login, accounts.get(login)];
  const wanted = login.toLowerCase();
  for (const [id, account] of accounts) {
    if (typeof account.email === 'string' && account.email.toLowerCase() === wanted) {
      return [id, account];
    }
  }
  return [undefined, undefined];
}

const { privateKey } = await generateKeyPair('RS256', { extractable: true });
const signingKey = { ...(await exportJWK(privateKey)), kid: randomUUID(), use: 'sig', alg: 'RS256' };

const OIDC_SCOPE = 'openid email profile';
const CLAIMS = ['sub', 'email', 'email_verified', 'name'];

// oidc-provider asks for a login only when the session has no account; an account that
// findAccount no longer finds (disabled) must sign in again too, and is refused then.
const policy = interactionPolicy.base();
policy.get('login').checks.push(new interactionPolicy.Check(
  'account_unavailable',
  "the session's account cannot be used",
  'login_required',
  (ctx) => Boolean(ctx.oidc.session.accountId && !ctx.oidc.account),
));

const configuration = {
  clients: [
    {
      client_id: clientId,
      client_secret: args['client-secret'],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
      // A placeholder: redirectUriAllowed below accepts any loopback URI.
      redirect_uris: ['http://127.0.0.1/callback'],
    },
  ],
  // An authorization request must name its redirect_uri, as OpenID Connect requires.
  allowOmittingSingleRegisteredRedirectUri: false,
  jwks: { keys: [signingKey] },
  cookies: {
    keys: ['idp-test-cookie-key-1', 'idp-test-cookie-key-0'],
    // Over plain HTTP a cookie cannot be SameSite=None (browsers want Secure with it), so the
    // session cookie is Lax, like the interaction cookies; a sign-in is a top-level navigation.
    long: { httpOnly: true, sameSite: 'lax' },
  },
  scopes: ['openid', 'email', 'profile'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
  },
  // Put the granted claims into the ID token of the code flow too, not only into userinfo.
  conformIdTokenClaims: false,
  features: {
    devInteractions: { enabled: false },
  },
  interactions: {
    policy,
    url(ctx, interaction) {
      return `/interaction/${interaction.uid}`;
    },
  },
  pkce: {
    methods: ['S256'],
    required: () => true,
  },
  // oidc-provider's defaults, spelled out (it logs a notice for every default it uses).
  ttl: {
    AccessToken: 60 * 60,
    AuthorizationCode: 60,
    IdToken: 60 * 60,
    Interaction: 60 * 60,
    Grant: 14 * 24 * 60 * 60,
    Session: 14 * 24 * 60 * 60,
  },
  async findAccount(ctx, id) {
    const account = accounts.get(id);
    if (!account || account.disabled) return undefined;
    return {
      accountId: id,
      async claims() {
        const claims = { sub: id, email_verified: account.email_verified };
        if (account.email !== undefined) claims.email = account.email;
        if (account.name !== undefined) claims.name = account.name;
        return claims;
      },
    };
  },
  // The client is first-party: its grant of the OpenID scopes needs no consent.
  async loadExistingGrant(ctx) {
    const { Grant } = ctx.oidc.provider;
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) {
      const grant = await Grant.find(grantId);
      if (grant) return grant;
    }
    const grant = new Grant({
      accountId: ctx.oidc.account.accountId,
      clientId: ctx.oidc.client.clientId,
    });
    grant.addOIDCScope(OIDC_SCOPE);
    grant.addOIDCClaims(CLAIMS);
    await grant.save();
    return grant;
  },
  async renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = page('Error', Object.entries(out)
      .map(([key, value]) => `<p><strong>${escape(key)}</strong>: ${escape(value)}</p>`)
      .join('\n'));
  },
};

// The issuer carries the port, so with --port 0 the provider is made once the port is known.
let provider;
let providerCallback;
const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    console.error(`oidc-provider test server: ${req.method} ${req.url}: ${err?.stack || err}`);
    if (!res.headersSent) {
      send(res, 500, 'text/plain; charset=utf-8', 'internal error\n');
    } else {
      res.end();
    }
  });
});

async function handle(req, res) {
  const url = new URL(req.url, 'http://127.0.0.1');
  const path = url.pathname;
  if (path.startsWith('/test/')) return control(req, res, path);
  const interaction = path.match(/^\/interaction\/([^/]+)(\/login)?$/);
  if (interaction) return interact(req, res, interaction[1], interaction[2] !== undefined);
  if (req.method === 'POST' && path === '/token') stats.token_requests += 1;
  if (path === '/auth') stats.authorization_requests += 1;
  return providerCallback(req, res);
}

// --- the control API -------------------------------------------------------------------------

async function control(req, res, path) {
  const account = path.match(/^\/test\/accounts\/([^/]+)$/);
  if (account && req.method === 'PUT') {
    const id = decodeURIComponent(account[1]);
    let body;
    try {
      body = JSON.parse((await readBody(req)) || '{}');
    } catch (err) {
      return json(res, 400, { error: `invalid JSON: ${err.message}` });
    }
    if (body === null || typeof body !== 'object' || Array.isArray(body)) {
      return json(res, 400, { error: 'the body must be a JSON object' });
    }
    const types = {
      email: 'string', email_verified: 'boolean', name: 'string', password: 'string', disabled: 'boolean',
    };
    const nullable = new Set(['email', 'name']);
    for (const [key, value] of Object.entries(body)) {
      if (!(key in types)) return json(res, 400, { error: `unknown field ${key}` });
      if (value === null && nullable.has(key)) {
        body[key] = undefined;
      } else if (typeof value !== types[key]) {
        return json(res, 400, { error: `${key} must be a ${types[key]}` });
      }
    }
    const existing = accounts.get(id);
    const updated = {
      email: undefined, email_verified: false, name: undefined, password: 'pass', disabled: false,
      ...existing,
      ...body,
    };
    accounts.set(id, updated);
    const shown = { ...updated };
    delete shown.password;
    return json(res, existing ? 200 : 201, { id, ...shown });
  }
  if (path === '/test/stats' && req.method === 'GET') return json(res, 200, stats);
  return json(res, 404, { error: `no ${req.method} ${path} here` });
}

// --- interactions ----------------------------------------------------------------------------

async function interact(req, res, uid, isLogin) {
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    return send(res, 400, 'text/html; charset=utf-8',
      page('Error', `<p>${escape(err.error_description || err.message)}</p>`));
  }
  if (details.uid !== uid) {
    return send(res, 400, 'text/html; charset=utf-8',
      page('Error', '<p>this sign-in is not the one in progress in this browser</p>'));
  }
  const { prompt } = details;

  if (!isLogin && req.method === 'GET') {
    if (prompt.name === 'login') return send(res, 200, 'text/html; charset=utf-8', loginPage(uid));
    if (prompt.name === 'consent') return autoConsent(req, res, details);
    return send(res, 501, 'text/plain; charset=utf-8', `prompt ${prompt.name} is not supported\n`);
  }
  if (isLogin && req.method === 'POST') {
    if (prompt.name !== 'login') {
      return send(res, 400, 'text/plain; charset=utf-8', `the prompt is ${prompt.name}, not login\n`);
    }
    const form = new URLSearchParams(await readBody(req));
    const login = form.get('login') || '';
    const [accountId, account] = findAccountByLogin(login);
    if (!account || form.get('password') !== account.password) {
      return send(res, 200, 'text/html; charset=utf-8',
        loginPage(uid, login, 'Invalid login or password.'));
    }
    if (account.disabled) {
      return provider.interactionFinished(req, res, {
        error: 'access_denied',
        error_description: 'the account is disabled',
      }, { mergeWithLastSubmission: false });
    }
    stats.logins += 1;
    const returnTo = await provider.interactionResult(req, res, { login: { accountId } }, {
      mergeWithLastSubmission: false,
    });
    await forgetOtherAccount(details, accountId);
    res.statusCode = 303;
    res.setHeader('Location', returnTo);
    res.setHeader('Content-Length', '0');
    return res.end();
  }
  res.setHeader('Allow', isLogin ? 'POST' : 'GET');
  return send(res, 405, 'text/plain; charset=utf-8', 'method not allowed\n');
}

// Signing in as another account than the browser's session has: let the new sign-in replace
// the old one, rather than oidc-provider's default of asking to sign out first. Called once
// the result is saved (oidc-provider refuses a result whose session changed its account).
async function forgetOtherAccount(details, accountId) {
  const previous = details.session;
  if (!previous?.accountId || previous.accountId === accountId || !previous.cookie) return;
  const session = await provider.Session.find(previous.cookie);
  if (!session) return;
  session.accountId = undefined;
  session.authorizations = undefined;
  await session.persist();
}

// The client is first-party: grant what the consent prompt found missing, without asking.
async function autoConsent(req, res, details) {
  const { prompt: { details: missing }, params, session } = details;
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  grant.addOIDCScope(OIDC_SCOPE);
  grant.addOIDCClaims(CLAIMS);
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scope] of Object.entries(missing.missingResourceScopes || {})) {
    grant.addResourceScope(indicator, scope.join(' '));
  }
  const grantId = await grant.save();
  return provider.interactionFinished(req, res, { consent: { grantId } }, {
    mergeWithLastSubmission: true,
  });
}

function loginPage(uid, login = '', error = undefined) {
  const id = escape(uid);
  return page('Sign in', `${error ? `<p class="error">${escape(error)}</p>\n` : ''}\
<form method="post" action="/interaction/${id}/login">
<label>Login <input type="text" name="login" value="${escape(login)}" autofocus></label>
<label>Password <input type="password" name="password"></label>
<button type="submit">Sign in</button>
</form>`);
}

// --- plumbing --------------------------------------------------------------------------------

function page(title, body) {
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>${escape(title)}</title></head>
<body><h1>${escape(title)}</h1>
${body}
</body></html>
`;
}

function escape(value) {
  return String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function send(res, status, type, body) {
  res.statusCode = status;
  res.setHeader('Content-Type', type);
  res.setHeader('Cache-Control', 'no-store');
  res.end(body);
}

function json(res, status, value) {
  send(res, status, 'application/json', `${JSON.stringify(value)}\n`);
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 1 << 20) throw new Error('request body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

server.on('error', (err) => {
  console.error(`oidc-provider test server: ${err.message}`);
  process.exit(1);
});
server.listen(port, '127.0.0.1', () => {
  const actualPort = server.address().port;
  const actualIssuer = `http://127.0.0.1:${actualPort}`;
  provider = new Provider(actualIssuer, configuration);
  provider.proxy = false;
  // A client may redirect to any loopback URI: the API under test listens on a free port.
  provider.Client.prototype.redirectUriAllowed = function redirectUriAllowed(value) {
    let parsed;
    try {
      parsed = new URL(value);
    } catch {
      return false;
    }
    return parsed.protocol === 'http:'
      && (parsed.hostname === '127.0.0.1' || parsed.hostname === 'localhost')
      && parsed.port !== ''
      && parsed.username === ''
      && parsed.password === ''
      && parsed.hash === '';
  };
  provider.on('server_error', (ctx, err) => {
    console.error(`oidc-provider server_error ${ctx.method} ${ctx.path}: ${err.stack || err}`);
  });
  for (const event of ['authorization.error', 'grant.error', 'userinfo.error', 'jwks.error',
    'discovery.error']) {
    provider.on(event, (ctx, err) => {
      console.error(`oidc-provider ${event}: ${err.message}${err.error_description ? ` (${err.error_description})` : ''}`);
    });
  }
  providerCallback = provider.callback();
  process.stdout.write(`{"port": ${actualPort}, "issuer": ${JSON.stringify(actualIssuer)}}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    process.exit(0);
  });
}
