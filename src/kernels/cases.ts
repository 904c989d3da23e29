// Every kernel family's conformance cases, for the test suite and `flux-grpo verify-device`.
import type { OpCase } from '../device/conformance.ts';
import { cases as elementwise } from './elementwise.cases.ts';
import { cases as reduce } from './reduce.cases.ts';
import { cases as norm } from './norm.cases.ts';
import { cases as groupnorm } from './groupnorm.cases.ts';
import { cases as matmul } from './matmul.cases.ts';
import { cases as attention } from './attention.cases.ts';
import { cases as conv } from './conv.cases.ts';
import { cases as optim } from './optim.cases.ts';

export const ALL_CASES: OpCase[] = [...elementwise, ...reduce, ...norm, ...groupnorm, ...matmul, ...attention, ...conv, ...optim];
