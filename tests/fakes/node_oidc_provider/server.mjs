// panva's oidc-provider (OpenID Certified), on loopback for the integration tests: client
// credentials, RS256 JWT access tokens for the resource a client asks for.
// Usage: node server.mjs <port> <jwks.json> <audience>; prints "ready" once listening.
// Restarted with another JWKS file on the same port, it has rotated its keys.
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const [port, jwksFile, audience] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  jwks: JSON.parse(readFileSync(jwksFile, 'utf8')),
  cookies: { keys: ['cookie-signing-key-for-tests-only'] },
  clients: [
    {
      client_id: 'capture-app',
      client_secret: 'capture-app-secret-for-tests-only',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
    },
  ],
  scopes: ['capture'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => audience,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resource) => ({
        audience: resource,
        scope: 'capture',
        accessTokenFormat: 'jwt',
        accessTokenTTL: 300,
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
});

provider.listen(Number(port), '127.0.0.1', () => {
  console.log('ready');
});
