"""Credentials per account: default ones for the home account, an assumed role elsewhere.

Findings aggregated from member accounts are contained in the account they name,
through a role configured for that account (STS AssumeRole with an external id).
Credentials are cached and refreshed well before they expire. Every set of
credentials is checked with GetCallerIdentity before first use: an account with
no role configured, or a role whose credentials turn out to belong to another
account, gets no session at all (observe-only), never the wrong credentials.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pipeline.actions.base import ActionFailed, invoke
from pipeline.actions.config import ContainmentConfig
from pipeline.aws import AwsClients
from pipeline.config import secret_reference
from pipeline.errors import ConfigError
from pipeline.models import ApiCall

log = logging.getLogger(__name__)

STS_REGION = "us-east-1"


@dataclass(frozen=True, slots=True)
class AccountSession:
    """Clients whose credentials belong to ``account`` (the actions' ``ClientSource``)."""

    account: str
    aws: AwsClients
    credentials: dict[str, str] | None = None
    cache_key: str = ""
    expires_at: float | None = None

    async def client(self, service: str, region: str) -> Any:
        return await self.aws.client(service, region=region, credentials=self.credentials,
                                     cache_key=self.cache_key)


class _Default:
    """The default credential chain, only for STS calls made before any account is known."""

    account = ""

    def __init__(self, aws: AwsClients) -> None:
        self.aws = aws

    async def client(self, service: str, region: str) -> Any:
        return await self.aws.client(service, region=region)


class CredentialBroker:
    def __init__(self, config: ContainmentConfig, aws: AwsClients, *,
                 refresh_margin: float = 300.0) -> None:
        self.config = config
        self.aws = aws
        self.refresh_margin = refresh_margin
        self._home: str | None = config.home_account
        self._sessions: dict[str, AccountSession] = {}
        self._home_session: AccountSession | None = None
        self._lock = asyncio.Lock()

    async def home_account(self) -> str:
        """The account the default credentials belong to (GetCallerIdentity once)."""
        if self._home is None:
            identity = await invoke(_Default(self.aws),
                                    ApiCall("sts", "GetCallerIdentity", {}, None, STS_REGION))
            self._home = str(identity["Account"])
        return self._home

    async def session(self, account: str) -> AccountSession | None:
        """A session for ``account``, or None: then nothing may be done there."""
        if account not in self.config.roles:
            if account == await self.home_account():
                # One object for the home account: reads coalesce per client source.
                if self._home_session is None or self._home_session.account != account:
                    self._home_session = AccountSession(account=account, aws=self.aws)
                return self._home_session
            return None
        cached = self._sessions.get(account)
        if cached is not None and cached.expires_at is not None and \
                cached.expires_at - time.time() > self.refresh_margin:
            return cached
        async with self._lock:
            cached = self._sessions.get(account)
            if cached is not None and cached.expires_at is not None and \
                    cached.expires_at - time.time() > self.refresh_margin:
                return cached
            fresh = await self._assume(account)
            if cached is not None:
                for service in ("ec2", "iam", "s3", "sts", "route53resolver"):
                    for region in {*self.config.regions, STS_REGION}:
                        await self.aws.forget(service, region=region, cache_key=cached.cache_key)
            if fresh is not None:
                self._sessions[account] = fresh
            return fresh

    async def _assume(self, account: str) -> AccountSession | None:
        role = self.config.roles[account]
        params: dict[str, Any] = {"RoleArn": role.role_arn, "RoleSessionName": role.session_name,
                                  "DurationSeconds": role.duration_seconds}
        if role.external_id is not None:
            if secret_reference(role.external_id) is not None:
                # ``env:``/``secretsmanager:`` must be resolved at start-up; sending the
                # reference itself as the external id would be a silent misconfiguration.
                raise ConfigError(f"roles[{account}].external_id is an unresolved secret "
                                  "reference (resolve_secrets was not run)")
            params["ExternalId"] = role.external_id.get_secret_value()
        try:
            result = await invoke(_Default(self.aws),
                                  ApiCall("sts", "AssumeRole", params, None, STS_REGION))
        except ActionFailed as exc:
            log.error("cannot assume the containment role for account %s: %s", account,
                      exc.code, extra={"account": account, "role_arn": role.role_arn})
            return None
        creds = result["Credentials"]
        expiration = creds["Expiration"]
        expires = expiration.timestamp() if isinstance(expiration, datetime) else \
            datetime.fromisoformat(str(expiration)).timestamp()
        credentials = {"AccessKeyId": creds["AccessKeyId"],
                       "SecretAccessKey": creds["SecretAccessKey"],
                       "SessionToken": creds["SessionToken"]}
        session = AccountSession(account=account, aws=self.aws, credentials=credentials,
                                 cache_key=f"role:{account}:{int(expires)}", expires_at=expires)
        sts = await session.client("sts", STS_REGION)
        identity = await sts.get_caller_identity()
        if str(identity.get("Account")) != account:
            log.error("assumed role for %s returned credentials of account %s: refused",
                      account, identity.get("Account"), extra={"account": account})
            return None
        return session
