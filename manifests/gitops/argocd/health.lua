-- Argo CD health for every ops.habitat.dev kind (Backup, Restore, Migration, ReplayJob, ScalePolicy,
-- WalArchive). All six carry the same kstatus-style conditions (Ready, Reconciling, Stalled) and
-- status.observedGeneration, so one script reads them all. Install: argocd-cm.yaml beside it.
local hs = { status = "Progressing", message = "Waiting for the operator" }

local function condition(type_)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function explain(c)
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason
end

if obj.status == nil then
  return hs
end

-- A status written for an older spec says nothing about the current one.
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end

local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = explain(stalled)
  return hs
end

local ready = condition("Ready")
if obj.status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = ready ~= nil and explain(ready) or "Failed"
  return hs
end

-- suspend (schedules, ReplayJob) and paused (ScalePolicy) stop the operator on purpose.
if obj.spec ~= nil and (obj.spec.suspend == true or obj.spec.paused == true) then
  hs.status = "Suspended"
  hs.message = ready ~= nil and explain(ready) or "Suspended"
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = explain(ready)
  return hs
end

local reconciling = condition("Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.message = explain(reconciling)
  return hs
end

if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = explain(ready)
end
return hs
