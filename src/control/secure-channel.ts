import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createHmac,
  diffieHellman,
  generateKeyPairSync,
  hkdfSync,
  randomBytes,
  timingSafeEqual,
  createPublicKey,
  type KeyObject,
} from 'node:crypto';

/**
 * The control channel's security: a pre-shared-key handshake with ephemeral X25519, then AES-256-GCM
 * frames (pure functions; control-connection.ts does the I/O).
 *
 * Why a PSK handshake rather than TLS with pinned certificates: operators of a migration network
 * already distribute one deployment secret to every host (the page-digest key derives from it too);
 * certificates would add a CA or per-host pinning to run, and Node's TLS has no TLS 1.3 external-PSK
 * mode. The handshake is small and standard in shape (Noise NNpsk0-like):
 *
 *   client -> server  hello(version, ephemeral X25519 public key, 32-byte nonce)
 *   server -> client  hello(...) + HMAC(k_auth, "server" || transcript)
 *   client -> server  HMAC(k_auth, "client" || transcript)
 *
 * with keys = HKDF-SHA256(ikm = X25519 shared secret, salt = PSK, info = label || SHA-256(transcript)).
 * Both sides prove they hold the PSK before either accepts a frame (mutual authentication); the
 * ephemeral keys give forward secrecy; each direction has its own key, and frame nonces are a counter
 * that TCP's ordering lets the receiver predict, so a replayed, dropped or reordered frame fails.
 */

export const HANDSHAKE_VERSION = 1;
const HELLO_BYTES = 1 + 32 + 32;
const PROOF_BYTES = 32;
const TAG_BYTES = 16;

export interface Hello {
  readonly version: number;
  readonly ephemeral: Uint8Array;
  readonly nonce: Uint8Array;
}

export interface ChannelKeys {
  readonly auth: Uint8Array;
  readonly clientToServer: Uint8Array;
  readonly serverToClient: Uint8Array;
}

/** The control PSK from the deployment secret (every host derives the same). */
export function deriveControlKey(secret: Uint8Array | string): Uint8Array {
  return new Uint8Array(hkdfSync('sha256', secret, 'vmscatter', 'control-psk v1', 32));
}

export interface EphemeralKey {
  readonly publicKey: Uint8Array;
  readonly privateKey: KeyObject;
}

export function generateEphemeral(): EphemeralKey {
  const { publicKey, privateKey } = generateKeyPairSync('x25519');
  const raw = publicKey.export({ format: 'der', type: 'spki' });
  return { publicKey: new Uint8Array(raw.subarray(raw.length - 32)), privateKey };
}

export function newHello(ephemeral: EphemeralKey): Hello {
  return {
    version: HANDSHAKE_VERSION,
    ephemeral: ephemeral.publicKey,
    nonce: new Uint8Array(randomBytes(32)),
  };
}

export function encodeHello(hello: Hello, proof?: Uint8Array): Uint8Array {
  const out = new Uint8Array(HELLO_BYTES + (proof ? PROOF_BYTES : 0));
  out[0] = hello.version;
  out.set(hello.ephemeral, 1);
  out.set(hello.nonce, 33);
  if (proof) out.set(proof, HELLO_BYTES);
  return out;
}

/** Parses a hello (with a trailing proof when `withProof`); undefined when malformed. */
export function decodeHello(
  bytes: Uint8Array,
  withProof: boolean,
): { hello: Hello; proof?: Uint8Array } | undefined {
  if (bytes.length !== HELLO_BYTES + (withProof ? PROOF_BYTES : 0)) return undefined;
  const hello = { version: bytes[0]!, ephemeral: bytes.slice(1, 33), nonce: bytes.slice(33, 65) };
  return withProof ? { hello, proof: bytes.slice(HELLO_BYTES) } : { hello };
}

/** X25519 agreement with the peer's raw public key; undefined for a key that is not a valid point. */
export function agree(own: EphemeralKey, peerPublic: Uint8Array): Uint8Array | undefined {
  try {
    const spkiPrefix = Buffer.from('302a300506032b656e032100', 'hex');
    const publicKey = createPublicKey({
      key: Buffer.concat([spkiPrefix, peerPublic]),
      format: 'der',
      type: 'spki',
    });
    const shared = new Uint8Array(diffieHellman({ privateKey: own.privateKey, publicKey }));
    // An all-zero result means a low-order point: refuse it (RFC 7748 section 6.1).
    return shared.some((b) => b !== 0) ? shared : undefined;
  } catch {
    return undefined;
  }
}

export function transcriptOf(clientHello: Hello, serverHello: Hello): Uint8Array {
  return new Uint8Array(Buffer.concat([encodeHello(clientHello), encodeHello(serverHello)]));
}

export function deriveChannelKeys(psk: Uint8Array, shared: Uint8Array, transcript: Uint8Array): ChannelKeys {
  const info = Buffer.concat([
    Buffer.from('vmscatter control v1 '),
    createHash('sha256').update(transcript).digest(),
  ]);
  const okm = new Uint8Array(hkdfSync('sha256', shared, psk, info, 96));
  return { auth: okm.slice(0, 32), clientToServer: okm.slice(32, 64), serverToClient: okm.slice(64, 96) };
}

export function proofOf(auth: Uint8Array, role: 'client' | 'server', transcript: Uint8Array): Uint8Array {
  return new Uint8Array(createHmac('sha256', auth).update(role).update(transcript).digest());
}

export function proofMatches(expected: Uint8Array, got: Uint8Array | undefined): boolean {
  return got !== undefined && got.length === expected.length && timingSafeEqual(expected, got);
}

/** AES-256-GCM over frames in one direction; the nonce is the frame's position in the stream. */
export class FrameCipher {
  private counter = 0n;

  constructor(private readonly key: Uint8Array) {}

  /**
   * Seals the concatenation of `parts` without joining them: the ciphertext of each part, then the
   * tag, to be written in that order. A message of a MiB is not copied into one plaintext, nor its
   * ciphertext and tag into one frame (control-channel.ts writes the parts as one writev).
   */
  sealParts(parts: readonly Uint8Array[]): Buffer[] {
    const cipher = createCipheriv('aes-256-gcm', this.key, this.nextNonce());
    const sealed = parts.map((part) => cipher.update(part));
    cipher.final();
    sealed.push(cipher.getAuthTag());
    return sealed;
  }

  /** Opens the next frame; undefined when it fails authentication (the connection must then close). */
  open(frame: Uint8Array): Uint8Array | undefined {
    if (frame.length < TAG_BYTES) return undefined;
    const decipher = createDecipheriv('aes-256-gcm', this.key, this.nextNonce());
    decipher.setAuthTag(frame.subarray(frame.length - TAG_BYTES));
    try {
      const body = decipher.update(frame.subarray(0, frame.length - TAG_BYTES));
      decipher.final();
      // A view, not a copy: the output has a memory of its own (Node allocates it for this call).
      return new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
    } catch {
      return undefined;
    }
  }

  private nextNonce(): Uint8Array {
    const nonce = new Uint8Array(12);
    new DataView(nonce.buffer).setBigUint64(4, this.counter++);
    return nonce;
  }
}
