// Calls spkeeper's POST /token in AWS, where the route is behind API Gateway's IAM authorizer:
// every request is signed with AWS Signature Version 4 (service "execute-api") by the AWS SDK
// for .NET's public signer (Amazon.Runtime.Signing, AWSSDK.Core 4.0.101 and later), with the
// credentials of the role your backend runs as.
//
//   SPKEEPER_API_URL=https://addin.example.com AWS_REGION=eu-west-1 dotnet run -- GRANT_ID
//
// SPKEEPER_API_URL is the stack's PublicUrl (the custom domain mapped to the HTTP API) or its
// ApiUrl output; AWS_REGION is the region the stack runs in. Credentials come from the SDK's
// default chain (environment, shared profiles, ECS/EC2 roles, web identity, ...). The access
// token is never printed: only when it expires.

using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using System.Text.Json.Serialization;
using Amazon;
using Amazon.Runtime;
using Amazon.Runtime.Credentials;
using Amazon.Runtime.Signing;

var apiUrl = Environment.GetEnvironmentVariable("SPKEEPER_API_URL");
var region = Environment.GetEnvironmentVariable("AWS_REGION") ?? Environment.GetEnvironmentVariable("AWS_DEFAULT_REGION");
if (string.IsNullOrEmpty(apiUrl) || string.IsNullOrEmpty(region) || args.Length != 1)
{
    Console.Error.WriteLine("usage: SPKEEPER_API_URL=https://… AWS_REGION=… dotnet run -- GRANT_ID");
    return 2;
}

using var spkeeper = new SpkeeperClient(new Uri(apiUrl), RegionEndpoint.GetBySystemName(region),
                                        DefaultAWSCredentialsIdentityResolver.GetCredentials());
var result = await spkeeper.GetTokenAsync(args[0]);
switch (result)
{
    case TokenResult.Token { Value: var token }:
        Console.WriteLine($"access token for grant {token.Grant.Id} ({token.Grant.SiteUrl}) until {token.ExpiresAt:O}; resource {token.Resource}");
        Console.WriteLine($"the grant: {token.Grant.Status}, {token.Grant.DaysLeft} days left");
        return 0;
    case TokenResult.RelaunchRequired { RenewUrl: var renewUrl }:
        Console.WriteLine($"the user must open the add-in again: {renewUrl}");
        return 1;
    case TokenResult.Unavailable { RetryAfter: var retryAfter }:
        Console.WriteLine($"SharePoint's token service is unavailable; retry in {retryAfter.TotalSeconds} s");
        return 1;
    case TokenResult.Error error:
        Console.Error.WriteLine($"refused: {(int)error.Status} {error.Code} {error.Message}");
        return 1;
    default:
        return 1;
}

/// <summary>spkeeper's app-backend routes, SigV4-signed. One instance per process (it owns an HttpClient).</summary>
public sealed class SpkeeperClient : IDisposable
{
    private static readonly JsonSerializerOptions Json = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };
    private readonly HttpClient _http;

    public SpkeeperClient(Uri apiUrl, RegionEndpoint region, AWSCredentials credentials)
    {
        // The handler signs every request just before it is sent, resolving (and refreshing) the
        // credentials each time. Redirects must not be followed below it: a redirected request would
        // carry a signature made for another URL.
        var signer = new SigV4SigningHandler(credentials, region, "execute-api")
        {
            InnerHandler = new HttpClientHandler { AllowAutoRedirect = false },
        };
        _http = new HttpClient(signer) { BaseAddress = apiUrl, Timeout = TimeSpan.FromSeconds(15) };
    }

    /// <summary>An access token for the grant's site; every answer of /token is a case to handle.</summary>
    public async Task<TokenResult> GetTokenAsync(string grantId, CancellationToken cancellationToken = default)
    {
        using var response = await _http.PostAsJsonAsync("/token", new { grant_id = grantId }, cancellationToken);
        switch (response.StatusCode)
        {
            case HttpStatusCode.OK:
                var token = await response.Content.ReadFromJsonAsync<AccessToken>(Json, cancellationToken);
                return new TokenResult.Token(token ?? throw new InvalidDataException("empty /token answer"));
            case HttpStatusCode.Conflict: // relaunch_required: the refresh token is gone; the user must reopen the add-in
                var conflict = await ReadErrorAsync(response, cancellationToken);
                return new TokenResult.RelaunchRequired(conflict.RenewUrl ?? "");
            case HttpStatusCode.ServiceUnavailable: // ACS failed after retries; the grant is unchanged
                return new TokenResult.Unavailable(response.Headers.RetryAfter?.Delta ?? TimeSpan.FromSeconds(30));
            default:
                // 403 from API Gateway itself: the role lacks execute-api:Invoke on the route, or the
                // signature does not match (wrong region, a proxy that changed the request, clock skew).
                var error = await ReadErrorAsync(response, cancellationToken);
                return new TokenResult.Error(response.StatusCode, error.Error ?? "", error.Message ?? "");
        }
    }

    private static async Task<ErrorBody> ReadErrorAsync(HttpResponseMessage response, CancellationToken cancellationToken)
    {
        try
        {
            return await response.Content.ReadFromJsonAsync<ErrorBody>(Json, cancellationToken) ?? new ErrorBody(null, null, null);
        }
        catch (JsonException)
        {
            return new ErrorBody(null, null, null);
        }
    }

    public void Dispose() => _http.Dispose();
}

/// <summary>The grant object of spkeeper's answers (never a token).</summary>
public sealed record Grant(string Id, string Kind, string SiteUrl, string Status, DateTimeOffset RefreshTokenExpiresAt,
                           int DaysLeft, string RenewUrl);

/// <summary>The /token answer. <c>Value</c> is the bearer token for SharePoint: use it, never log it.</summary>
public sealed record AccessToken(
    [property: JsonPropertyName("access_token")] string Value,
    string TokenType,
    DateTimeOffset ExpiresAt,
    string Resource,
    Grant Grant);

public sealed record ErrorBody(string? Error, string? Message, string? RenewUrl);

public abstract record TokenResult
{
    public sealed record Token(AccessToken Value) : TokenResult;
    public sealed record RelaunchRequired(string RenewUrl) : TokenResult;
    public sealed record Unavailable(TimeSpan RetryAfter) : TokenResult;
    public sealed record Error(HttpStatusCode Status, string Code, string Message) : TokenResult;
}
