// A webhook receiver for spkeeper's notices: ASP.NET Core minimal API (.NET 8) with the
// StandardWebhooks NuGet package.
//
//   SPKEEPER_WEBHOOK_SECRET=whsec_… dotnet run --urls http://127.0.0.1:8090
//
// It does the three things every receiver must do:
// 1. Verify the Standard Webhooks signature (webhook-id, webhook-timestamp, webhook-signature)
//    over the body exactly as received. A bad or missing signature, or a timestamp more than five
//    minutes off, is refused with 401 and nothing is processed.
// 2. Deduplicate on the notice's "id": spkeeper delivers at least once, and a redelivery carries
//    the same id. The first delivery claims the id; later ones get 204 and are not processed.
// 3. Answer 2xx once the notice is recorded; a failure releases the claim and answers 500, so
//    spkeeper retries later (with backoff, for up to about two days).

using System.Collections.Concurrent;
using System.Text;
using System.Text.Json;
using StandardWebhooks;
using StandardWebhooks.Diagnostics;

var builder = WebApplication.CreateBuilder(args);

// spkeeper's notices are a few hundred bytes: refuse (413) anything much larger unread.
builder.WebHost.ConfigureKestrel(kestrel => kestrel.Limits.MaxRequestBodySize = 64 * 1024);

// From configuration: the environment variable, or appsettings / user secrets / a vault.
var secret = builder.Configuration["SPKEEPER_WEBHOOK_SECRET"];
if (string.IsNullOrEmpty(secret) || !secret.StartsWith("whsec_", StringComparison.Ordinal))
{
    throw new InvalidOperationException("Set SPKEEPER_WEBHOOK_SECRET to the whsec_… secret spkeeper signs with.");
}

builder.Services.AddSingleton(new StandardWebhook(secret));
builder.Services.AddSingleton<NoticeLedger>();
builder.Services.AddSingleton<NoticeHandler>();

var app = builder.Build();

app.MapPost("/webhook", async (HttpRequest request, StandardWebhook webhook, NoticeLedger ledger,
                               NoticeHandler handler, ILogger<NoticeHandler> log) =>
{
    // 1. The signature covers the exact bytes sent: verify the raw body, never a re-serialised object.
    string payload;
    using (var reader = new StreamReader(request.Body, new UTF8Encoding(false, throwOnInvalidBytes: true)))
    {
        try
        {
            payload = await reader.ReadToEndAsync();
        }
        catch (DecoderFallbackException)
        {
            return Results.Unauthorized(); // not UTF-8: spkeeper never sent it
        }
    }

    try
    {
        webhook.Verify(payload, request.Headers);
    }
    catch (WebhookVerificationException e)
    {
        log.LogWarning("Refused a webhook ({WebhookId}): {Reason}", request.Headers["webhook-id"].ToString(), e.Message);
        return Results.Unauthorized();
    }

    Notice? notice;
    try
    {
        notice = JsonSerializer.Deserialize<Notice>(payload, Notice.JsonOptions);
    }
    catch (JsonException)
    {
        return Results.BadRequest();
    }
    if (notice is null || string.IsNullOrEmpty(notice.Id))
    {
        return Results.BadRequest();
    }

    // 2. Once per notice id.
    if (!ledger.TryClaim(notice.Id))
    {
        log.LogInformation("Duplicate delivery of {NoticeId} ({Type}): already processed", notice.Id, notice.Type);
        return Results.NoContent();
    }

    // 3. The work; a failure releases the claim so that spkeeper's retry is processed.
    try
    {
        await handler.HandleAsync(notice);
    }
    catch (Exception e)
    {
        ledger.Release(notice.Id);
        log.LogError(e, "Processing {NoticeId} failed; spkeeper will retry", notice.Id);
        return Results.StatusCode(StatusCodes.Status500InternalServerError);
    }
    return Results.NoContent();
});

app.Run();

/// <summary>A notice as spkeeper sends it (version 1; fields are only ever added).</summary>
public sealed record Notice(
    int Version,
    string Id,
    string Type,
    DateTimeOffset CreatedAt,
    NoticeGrant? Grant,
    DateTimeOffset? RefreshTokenExpiresAt,
    int? DaysLeft,
    string? RenewUrl,
    DateTimeOffset? ClientSecretExpiresAt)
{
    public static readonly JsonSerializerOptions JsonOptions = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
    };
}

public sealed record NoticeGrant(string Id, string? Realm, string SiteUrl, NoticeUser? User);

public sealed record NoticeUser(string? Title, string? Email, string? LoginName);

/// <summary>
/// Notice ids already claimed. In memory for the example: in production claim the id with a
/// unique key in your database (an INSERT that fails on a duplicate key), in the same
/// transaction as the work if you can, so a restart or a second instance still processes each
/// notice once.
/// </summary>
public sealed class NoticeLedger
{
    private readonly ConcurrentDictionary<string, byte> _claimed = new();

    public bool TryClaim(string noticeId) => _claimed.TryAdd(noticeId, 0);

    public void Release(string noticeId) => _claimed.TryRemove(noticeId, out _);
}

/// <summary>Your application's work for each notice type; here it only logs what it would do.</summary>
public sealed class NoticeHandler(ILogger<NoticeHandler> log)
{
    public Task HandleAsync(Notice notice)
    {
        var who = notice.Grant?.User?.Email ?? notice.Grant?.User?.Title ?? notice.Grant?.Id ?? "?";
        switch (notice.Type)
        {
            case "refresh_token.expiring":
                log.LogInformation("Remind {Who}: reopen the add-in within {Days} days ({RenewUrl})", who, notice.DaysLeft, notice.RenewUrl);
                break;
            case "refresh_token.expired":
                log.LogInformation("Mark {Who} disconnected; ask them to reopen the add-in ({RenewUrl})", who, notice.RenewUrl);
                break;
            case "refresh_token.revoked":
                log.LogInformation("Mark {Who} disconnected (access revoked)", who);
                break;
            case "refresh_token.renewed":
                log.LogInformation("Clear the reminders for {Who}: connected until {Until}", who, notice.RefreshTokenExpiresAt);
                break;
            case "client_secret.expiring":
                log.LogWarning("The add-in's client secret expires {When}: rotate it", notice.ClientSecretExpiresAt);
                break;
            case "webhook.test":
                log.LogInformation("A connectivity test from spkeeper doctor: nothing to do");
                break;
            default:
                log.LogInformation("Ignoring notice type {Type}", notice.Type);
                break;
        }
        return Task.CompletedTask;
    }
}
