// A real OpenID provider (node's oidc-provider) on loopback, for the registry's sign-in tests.
//
// MESH_NPM_MODULES=.mesh/npm/node_modules node provider.mjs '{"port": 0, "resource": "http://127.0.0.1:7300",
//                                                            "clients": [...], "accounts": {...}}'
// (the package is found through MESH_NPM_MODULES: ES modules do not look at NODE_PATH)
//
// Prints "listening http://127.0.0.1:PORT" once it serves. What the tests need of a provider is set up here:
// JWT access tokens for resource indicators (RFC 8707) with the account's groups in them, the device
// authorization grant, dynamic client registration (what the MCP SDK's auth flow uses), and a login page
// whose form takes an account name (no password: test accounts only); consent is given at once.
import { generateKeyPairSync } from 'node:crypto';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const modules = process.env.MESH_NPM_MODULES ?? 'node_modules';
const { default: Provider, errors } = await import(pathToFileURL(join(modules, 'oidc-provider', 'lib', 'index.js')));

const cfg = JSON.parse(process.argv[2] ?? '{}');
const accounts = cfg.accounts ?? {};

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'test-rs256', alg: 'RS256', use: 'sig' };

const server = createServer();
await new Promise((resolve) => server.listen(cfg.port ?? 0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: cfg.clients ?? [],
  jwks: { keys: [signingKey] },
  cookies: { keys: ['only-for-tests'] },
  pkce: { required: () => true },
  scopes: ['openid', 'profile', 'email', 'offline_access'],
  claims: { openid: ['sub'], email: ['email'], profile: ['name'], groups: ['groups'] },
  features: {
    devInteractions: { enabled: false },
    deviceFlow: { enabled: cfg.deviceFlow !== false },
    registration: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (ctx, client, oneOf) => oneOf ?? cfg.resource,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, indicator, client) => {
        if (!/^https?:\/\//.test(indicator)) throw new errors.InvalidTarget();
        return {
          scope: cfg.resourceScope ?? 'mesh',
          audience: indicator,
          accessTokenFormat: 'jwt',
          accessTokenTTL: client?.clientId?.endsWith('-short') ? 2 : 300,
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  findAccount: async (ctx, id) => (accounts[id]
    ? { accountId: id, claims: async () => ({ sub: id, ...accounts[id] }) }
    : undefined),
  extraTokenClaims: async (ctx, token) => {
    const account = accounts[token.accountId];
    if (token.kind !== 'AccessToken' || !account) return undefined;
    return { groups: account.groups ?? [], email: account.email, name: account.name };
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
});

async function formBody(req) {
  let raw = '';
  for await (const chunk of req) raw += chunk;
  return Object.fromEntries(new URLSearchParams(raw));
}

// Login: a form asking which account; consent: granted at once for what the client asked.
provider.use(async (ctx, next) => {
  const match = ctx.path.match(/^\/interaction\/([^/]+)(\/login)?$/);
  if (!match) return next();
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  const { prompt, params } = details;
  if (ctx.method === 'POST' && match[2]) {
    const { login } = await formBody(ctx.req);
    if (!accounts[login]) {
      ctx.status = 400;
      ctx.body = `unknown account ${login}`;
      return undefined;
    }
    const to = await provider.interactionResult(ctx.req, ctx.res, { login: { accountId: login } },
      { mergeWithLastSubmission: false });
    return ctx.redirect(to);
  }
  if (prompt.name === 'login') {
    ctx.type = 'html';
    ctx.body = `<!DOCTYPE html><html><body><h1>Sign in</h1>
      <form method="post" action="/interaction/${details.uid}/login">
      <input type="text" name="login" placeholder="account"><button type="submit">Sign in</button></form>
      </body></html>`;
    return undefined;
  }
  const grant = details.grantId ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
  if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
  if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(prompt.details.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  const to = await provider.interactionResult(ctx.req, ctx.res, { consent: { grantId } },
    { mergeWithLastSubmission: true });
  return ctx.redirect(to);
});

server.on('request', provider.callback());
console.log(`listening ${issuer}`);
