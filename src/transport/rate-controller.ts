/**
 * Send-rate control for one multicast session, driven by the slowest receiver's reports.
 *
 * A receiver's link is congested when its queue grows (round-trip time well above the least seen) or
 * when its loss rises well above the loss it always has (a lossy link that is not full must not throttle
 * the session: a TCP-style equation would cap a 1%-loss LAN far below its rate). The controller grows the
 * rate multiplicatively while nobody is congested and cuts it when anyone is, once per control interval,
 * never above the operator's cap.
 */
export interface RateControllerConfig {
  /** Never send faster (bytes per second). */
  readonly capBytesPerSecond: number;
  /** Rate at the start (bytes per second); default a quarter of the cap. */
  readonly initialBytesPerSecond?: number;
  /** Floor, so a session always progresses (bytes per second). */
  readonly minBytesPerSecond?: number;
  /** Queueing delay over the least RTT taken as congestion (ms). */
  readonly queueDelayMs?: number;
  /** Loss over a receiver's usual loss taken as congestion (share, 0..1). */
  readonly lossExcess?: number;
}

interface ReceiverSignal {
  minRttMs: number;
  srttMs: number;
  /** The last RECENT_SAMPLES RTT samples (a ring), and how many were taken. */
  recent: number[];
  samples: number;
  /** Smoothed loss share and the least smoothed loss seen (the link's usual loss). */
  loss: number;
  lossFloor: number;
}

const GROWTH = 1.25;
const FLOOR_RISE = 0.0005;
const CUT = 0.8;
const MIN_INTERVAL_MS = 5;
/**
 * A queue delays every packet behind it; a receiver that did not run for a while (a busy host) answers
 * a few heartbeats late and the next ones on time. So queueing is read from the least of the last few
 * RTT samples, not from their average.
 */
const RECENT_SAMPLES = 4;

export class RateController {
  private rateValue: number;
  private readonly receivers = new Map<number, ReceiverSignal>();
  private lastDecisionAt = -Infinity;
  private congestedSinceDecision = false;
  /** Why the rate was cut, counted per decision (for reports: a busy host shows as 'queue'). */
  readonly cuts = { queue: 0, loss: 0 };
  private cause: 'queue' | 'loss' = 'queue';
  private readonly cap: number;
  private readonly floor: number;
  private readonly queueDelayMs: number;
  private readonly lossExcess: number;

  constructor(config: RateControllerConfig) {
    if (!(config.capBytesPerSecond > 0)) throw new RangeError('rate cap must be positive (bytes per second)');
    this.cap = config.capBytesPerSecond;
    // A floor of 1% of the cap: deep enough for real congestion, never the crawl a collapse would be.
    this.floor = Math.min(this.cap, config.minBytesPerSecond ?? this.cap / 100);
    this.rateValue = Math.max(this.floor, Math.min(this.cap, config.initialBytesPerSecond ?? this.cap / 4));
    // Queueing well beyond scheduling noise: on a busy host a receiver answers a few ms late without any
    // network queue, and cutting for that starves the session (seen in bench/transport).
    this.queueDelayMs = config.queueDelayMs ?? 20;
    this.lossExcess = config.lossExcess ?? 0.05;
  }

  /** Current send rate, bytes per second. */
  get rate(): number {
    return this.rateValue;
  }

  /** A receiver's report: its RTT as measured by the sender (if known now) and its loss share. */
  report(receiver: number, rttMs: number | undefined, lossShare: number): void {
    let s = this.receivers.get(receiver);
    if (!s) {
      s = { minRttMs: Infinity, srttMs: 0, recent: [], samples: 0, loss: lossShare, lossFloor: lossShare };
      this.receivers.set(receiver, s);
    }
    if (rttMs !== undefined && rttMs >= 0) {
      s.minRttMs = Math.min(s.minRttMs, rttMs);
      s.srttMs = s.srttMs === 0 ? rttMs : 0.875 * s.srttMs + 0.125 * rttMs;
      s.recent[s.samples % RECENT_SAMPLES] = rttMs;
      s.samples++;
    }
    s.loss = 0.75 * s.loss + 0.25 * lossShare;
    // The usual loss falls at once with the loss, and rises only slowly (a time constant of some
    // thousands of reports), so sustained congestion loss is not mistaken for the link's nature.
    s.lossFloor = s.loss < s.lossFloor ? s.loss : s.lossFloor + (s.loss - s.lossFloor) * FLOOR_RISE;
    const queueing =
      s.samples >= RECENT_SAMPLES &&
      Math.min(...s.recent) - s.minRttMs > Math.max(this.queueDelayMs, s.minRttMs);
    if (queueing || s.loss > s.lossFloor + this.lossExcess) {
      this.congestedSinceDecision = true;
      this.cause = queueing ? 'queue' : 'loss';
    }
  }

  /** Stops taking a receiver's reports into account (it left or was dropped). */
  forget(receiver: number): void {
    this.receivers.delete(receiver);
  }

  /** Smoothed RTT of the slowest receiver, ms (for timers); a LAN default before any sample. */
  get slowestRttMs(): number {
    let worst = 0;
    for (const s of this.receivers.values()) worst = Math.max(worst, s.srttMs);
    return worst > 0 ? worst : 1;
  }

  /** Decides once per control interval (at least one RTT): grow or cut. */
  tick(nowMs: number): void {
    const interval = Math.max(MIN_INTERVAL_MS, 2 * this.slowestRttMs);
    if (nowMs - this.lastDecisionAt < interval) return;
    this.lastDecisionAt = nowMs;
    if (this.congestedSinceDecision) this.cuts[this.cause]++;
    const next = this.congestedSinceDecision ? this.rateValue * CUT : this.rateValue * GROWTH;
    this.rateValue = Math.max(this.floor, Math.min(this.cap, next));
    this.congestedSinceDecision = false;
  }
}
