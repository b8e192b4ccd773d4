import { InfeasiblePlacementError } from '../errors.js';
import type { PlacementProblem } from './placement-problem.js';

/** Feasibility of a placement problem and of an assignment, with messages naming the constraint. */

/**
 * Throws InfeasiblePlacementError for a constraint that no placement can meet, naming the VM or target
 * at fault. Passing does not prove a packing exists (that is bin packing); placeVms searches for one.
 */
export function checkPlacementFeasibility(problem: PlacementProblem): void {
  const { vms, targets } = problem;
  const T = targets.length;
  if (vms.length === 0) return;
  if (T === 0) throw new InfeasiblePlacementError(`${plural(vms.length, 'VM')} but no targets`);

  for (const vm of vms) {
    for (const x of vm.excludedTargets) {
      if (!Number.isInteger(x) || x < 0 || x >= T) {
        throw new InfeasiblePlacementError(
          `VM ${vm.name} excludes target #${x}, which does not exist (${plural(T, 'target')})`,
        );
      }
    }
    if (vm.fixedTarget >= 0) {
      const t = vm.fixedTarget;
      const target = targets[t];
      if (!Number.isInteger(t) || target === undefined) {
        throw new InfeasiblePlacementError(
          `VM ${vm.name} is pinned to target #${t}, which does not exist (${plural(T, 'target')})`,
        );
      }
      if (vm.excludedTargets.includes(t)) {
        throw new InfeasiblePlacementError(`VM ${vm.name} is pinned to ${target.name} and also excludes it`);
      }
      continue;
    }
    const reasons: string[] = [];
    let fits = false;
    for (let t = 0; t < T; t++) {
      const target = targets[t]!;
      if (vm.excludedTargets.includes(t)) reasons.push(`${target.name} excluded`);
      else if (target.maxVms < 1) reasons.push(`${target.name} takes no VMs (maxVms ${target.maxVms})`);
      else if (target.memoryBytes < vm.memoryBytes) {
        reasons.push(`${target.name} has ${formatBytes(target.memoryBytes)}`);
      } else fits = true;
    }
    if (!fits) {
      throw new InfeasiblePlacementError(
        `VM ${vm.name} (${formatBytes(vm.memoryBytes)}) fits on no target: ${reasons.join(', ')}`,
      );
    }
  }

  for (let t = 0; t < T; t++) {
    const target = targets[t]!;
    const pinned = vms.filter((vm) => vm.fixedTarget === t);
    if (pinned.length === 0) continue;
    const names = pinned.map((vm) => vm.name).join(', ');
    const subject = pinned.length === 1 ? `VM ${names} is` : `VMs ${names} are`;
    const need = pinned.reduce((sum, vm) => sum + vm.memoryBytes, 0);
    if (need > target.memoryBytes) {
      throw new InfeasiblePlacementError(
        `${subject} pinned to ${target.name} but ${target.name} holds ${formatBytes(target.memoryBytes)} ` +
          `and the VMs pinned there need ${formatBytes(need)}`,
      );
    }
    if (pinned.length > target.maxVms) {
      throw new InfeasiblePlacementError(
        `${subject} pinned to ${target.name} but ${target.name} takes at most ${plural(target.maxVms, 'VM')} (maxVms)`,
      );
    }
  }

  const slots = targets.reduce((sum, t) => sum + Math.max(0, t.maxVms), 0);
  if (vms.length > slots) {
    throw new InfeasiblePlacementError(
      `${plural(vms.length, 'VM')} but the targets take at most ${plural(slots, 'VM')} in all (maxVms)`,
    );
  }
  const need = vms.reduce((sum, vm) => sum + vm.memoryBytes, 0);
  const have = targets.reduce((sum, t) => sum + t.memoryBytes, 0);
  if (need > have) {
    throw new InfeasiblePlacementError(
      `VMs need ${formatBytes(need)} but targets hold ${formatBytes(have)} in all`,
    );
  }
}

/** Every constraint the assignment breaks, as messages (empty when it is a valid placement). */
export function placementViolations(problem: PlacementProblem, assignment: Int32Array): string[] {
  const { vms, targets } = problem;
  const out: string[] = [];
  if (assignment.length !== vms.length)
    return [`assignment has ${assignment.length} entries for ${vms.length} VMs`];
  const mem = new Float64Array(targets.length);
  const count = new Float64Array(targets.length);
  for (let v = 0; v < vms.length; v++) {
    const vm = vms[v]!;
    const t = assignment[v]!;
    const target = targets[t];
    if (target === undefined) {
      out.push(`VM ${vm.name} has no target`);
      continue;
    }
    if (vm.fixedTarget >= 0 && vm.fixedTarget !== t) out.push(`VM ${vm.name} is pinned elsewhere`);
    if (vm.excludedTargets.includes(t)) out.push(`VM ${vm.name} is on excluded ${target.name}`);
    mem[t]! += vm.memoryBytes;
    count[t]!++;
  }
  for (let t = 0; t < targets.length; t++) {
    const target = targets[t]!;
    if (mem[t]! > target.memoryBytes) out.push(`${target.name} is over its memory`);
    if (count[t]! > target.maxVms) out.push(`${target.name} is over maxVms`);
  }
  return out;
}

export function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? '' : 's'}`;
}

export function formatBytes(bytes: number): string {
  const GiB = 1024 ** 3;
  if (bytes >= GiB || bytes === 0) return `${(bytes / GiB).toFixed(1)} GiB`;
  return `${(bytes / 1024 ** 2).toFixed(1)} MiB`;
}
