import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { realScheduler, type DatagramSocket } from '../../src/transport/datagram.js';
import { DgramSocket } from '../../src/transport/dgram-socket.js';
import { MemoryNetwork } from '../../src/transport/memory-network.js';
import { Prng } from '../../src/memory/prng.js';

/**
 * One contract, two implementations: every case runs on the in-memory network and on real UDP sockets
 * over loopback. Waits are event-driven (resolve when the datagram arrives), bounded by a failsafe.
 */
interface Fixture {
  readonly name: string;
  /** A receiving socket bound to the group's port, and a plain one for sending. */
  member(): Promise<DatagramSocket>;
  plain(): Promise<DatagramSocket>;
  readonly group: string;
}

let nextPort = 47_000 + (process.pid % 1000) * 2;

const fixtures: Fixture[] = [
  (() => {
    const network = new MemoryNetwork(realScheduler, new Prng(3).next.bind(new Prng(3)));
    let host = 1;
    return {
      name: 'memory network',
      group: '239.255.0.1:7420',
      member: async () => network.socket(`10.1.0.${host++}:7420`),
      plain: async () => network.socket(`10.1.0.${host++}:9000`),
    };
  })(),
  (() => {
    const port = nextPort++;
    return {
      name: 'node:dgram on loopback',
      group: `239.255.77.${(process.pid % 200) + 1}:${port}`,
      member: () => DgramSocket.open({ port, multicastInterface: '127.0.0.1' }),
      plain: () => DgramSocket.open({ bindAddress: '127.0.0.1', multicastInterface: '127.0.0.1' }),
    };
  })(),
];

/** Resolves with the next datagram a socket receives (its bytes copied), or rejects after `ms`. */
function nextDatagram(socket: DatagramSocket, ms = 2000): Promise<{ bytes: Uint8Array; from: string }> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no datagram arrived')), ms);
    socket.onDatagram((bytes, from) => {
      clearTimeout(timer);
      resolve({ bytes: bytes.slice(), from });
    });
  });
}

for (const fixture of fixtures) {
  describe(`datagram contract: ${fixture.name}`, () => {
    test('unicast arrives byte-exact, with the sender as its source', async () => {
      const [a, b] = [await fixture.plain(), await fixture.plain()];
      try {
        const payload = Uint8Array.from({ length: 8900 }, (_, i) => i % 251);
        const arrival = nextDatagram(b);
        a.send(payload, b.address);
        const got = await arrival;
        assert.deepEqual(got.bytes, payload);
        assert.equal(got.from, a.address);
      } finally {
        await Promise.all([a.close(), b.close()]);
      }
    });

    test('multicast reaches every member and no one else; leaving stops it', async () => {
      const sender = await fixture.plain();
      const members = [await fixture.member(), await fixture.member()];
      const outsider = await fixture.plain();
      try {
        for (const m of members) m.joinGroup(fixture.group);
        let outsiderGot = 0;
        outsider.onDatagram(() => outsiderGot++);
        const arrivals = members.map((m) => nextDatagram(m));
        sender.send(Uint8Array.of(1, 2, 3), fixture.group);
        for (const got of await Promise.all(arrivals)) assert.deepEqual(got.bytes, Uint8Array.of(1, 2, 3));
        // A unicast marker sent after the group datagram shows the outsider had its chance.
        const marker = nextDatagram(outsider);
        sender.send(Uint8Array.of(9), outsider.address);
        await marker;
        assert.equal(outsiderGot, 0, 'a non-member receives no group traffic');

        // Membership is per host on a real network stack (Linux delivers a group to every socket on the
        // port while any socket of the host is a member), so the contract is checked with the last member.
        await members[1]!.close();
        members[0]!.leaveGroup(fixture.group);
        let leftGot = 0;
        members[0]!.onDatagram((bytes) => {
          if (bytes[0] === 4) leftGot++;
        });
        sender.send(Uint8Array.of(4), fixture.group);
        const marker2 = new Promise<void>((resolve) => {
          members[0]!.onDatagram((bytes) => (bytes[0] === 4 ? leftGot++ : resolve()));
        });
        sender.send(Uint8Array.of(5), members[0]!.address);
        await marker2;
        assert.equal(leftGot, 0, 'a member that left receives no more group traffic');
      } finally {
        await Promise.all([sender.close(), outsider.close(), ...members.map((m) => m.close())]);
      }
    });

    test('close is idempotent and a closed socket neither sends nor receives', async () => {
      const [a, b] = [await fixture.plain(), await fixture.plain()];
      await b.close();
      await b.close();
      let got = 0;
      b.onDatagram(() => got++);
      b.send(Uint8Array.of(1), a.address);
      a.send(Uint8Array.of(1), b.address);
      await a.close();
      assert.equal(got, 0);
    });
  });
}
