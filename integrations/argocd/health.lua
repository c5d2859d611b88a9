-- Argo CD health of agentarmy.io objects (Agent, Fleet, Policy, Task), read from the
-- conditions the operator writes (kstatus conventions). Install it in argocd-cm, e.g.
--   resource.customizations.health.agentarmy.io_*: |
--     <this file>
-- Tested against statuses the operator's own code produces: tests/unit/test_argocd_health.py.
local hs = {}

local function condition(name)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == name then
      return c
    end
  end
  return nil
end

local function is(name, value)
  local c = condition(name)
  return c ~= nil and c.status == value, c
end

local generation = obj.metadata and obj.metadata.generation or 0
local observed = obj.status and obj.status.observedGeneration or 0
if obj.status == nil or observed < generation then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe the latest spec"
  return hs
end

-- Will not get there by itself: an aborted canary, a Task that failed.
for _, name in ipairs({"Stalled", "Failed", "Halted"}) do
  local yes, c = is(name, "True")
  if yes then
    hs.status = "Degraded"
    hs.message = c.reason .. ": " .. (c.message or "")
    return hs
  end
end

if obj.kind == "Task" then
  local done, c = is("Complete", "True")
  if done then
    hs.status = "Healthy"
    hs.message = c.message or ""
    return hs
  end
  local refused, r = is("Accepted", "False")
  hs.status = "Progressing"
  hs.message = refused and (r.reason .. ": " .. (r.message or "")) or (obj.status.phase or "")
  return hs
end

if obj.kind == "Agent" then
  local degraded, d = is("Degraded", "True")
  if degraded then
    hs.status = "Degraded"
    hs.message = d.reason .. ": " .. (d.message or "")
    return hs
  end
  local ready, r = is("Ready", "True")
  hs.status = ready and "Healthy" or "Progressing"
  hs.message = r and r.message or ""
  return hs
end

if obj.kind == "Policy" then
  local ready, r = is("Ready", "True")
  if r == nil then
    hs.status = "Progressing"
    hs.message = "waiting for the operator"
  else
    hs.status = ready and "Healthy" or "Degraded"
    hs.message = r.reason .. ": " .. (r.message or "")
  end
  return hs
end

-- Fleet: Healthy once the rollout is complete and enough Agents are available.
local reconciling, rc = is("Reconciling", "True")
local available, a = is("Available", "True")
if reconciling then
  hs.status = "Progressing"
  hs.message = rc.message or ""
elseif available then
  hs.status = "Healthy"
  hs.message = a.message or ""
else
  hs.status = "Progressing"
  hs.message = a and a.message or "waiting for agents"
end
return hs
