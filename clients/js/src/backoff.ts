/** Reconnect delays: exponential with jitter, capped (1 s, 2 s, 4 s, 8 s ... 30 s). */
export interface BackoffOptions {
  /** First delay in ms (default 1000). */
  initial?: number;
  /** Growth per attempt (default 2). */
  factor?: number;
  /** Cap in ms (default 30000). */
  max?: number;
  /** Fraction of each delay that is random (default 0.5: spread over [d/2, d]). */
  jitter?: number;
}

export class Backoff {
  readonly initial: number;
  readonly factor: number;
  readonly max: number;
  readonly jitter: number;

  constructor(
    options: BackoffOptions = {},
    private readonly random: () => number = Math.random,
  ) {
    this.initial = options.initial ?? 1000;
    this.factor = options.factor ?? 2;
    this.max = options.max ?? 30000;
    this.jitter = options.jitter ?? 0.5;
    if (!(this.initial > 0) || !(this.max >= this.initial)) throw new RangeError("need 0 < initial <= max");
    if (!(this.factor >= 1)) throw new RangeError("factor must be >= 1");
    if (!(this.jitter >= 0 && this.jitter <= 1)) throw new RangeError("jitter must be within [0, 1]");
  }

  /** The un-jittered delay before attempt `attempt` (0-based). */
  ceiling(attempt: number): number {
    let delay = this.initial;
    for (let i = 0; i < Math.min(attempt, 64); i++) {
      delay *= this.factor;
      if (delay >= this.max) return this.max;
    }
    return Math.min(delay, this.max);
  }

  delay(attempt: number): number {
    return this.ceiling(attempt) * (1 - this.jitter * this.random());
  }
}
